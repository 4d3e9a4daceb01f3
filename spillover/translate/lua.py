"""Lua sources run inside Envoy. Kept tiny: each does one thing Envoy has no native filter for."""

from __future__ import annotations

__all__ = [
    "NORMALIZE",
    "PREFIX_HASH",
    "PREFIX_HASH_NAME",
    "UPSTREAM_STATE",
    "client_host",
    "lua_string",
    "path_prefix",
    "remote_side",
]

PREFIX_HASH_NAME = "prefix_hash"

# The slow path only. Routes match the `x-model` (and `config-profile`) request headers, so a request
# that names its model there is routed with no Lua and no body buffering: its route switches this
# filter and json_to_metadata off, and so does `body-model`, where a JSON body alone names the model
# (json_to_metadata and a header_mutation filter copy it). Every other request lands first on a route that leaves them on
# (`missing-model`, or the two that catch `model` / `x-aibrix-config-profile` alone); this script,
# after json_to_metadata, writes the model and profile into those headers with the precedence below,
# and the header change clears the route cache (clear_route_cache), so the route is chosen again.
# header_to_metadata cannot do this job: it never clears the route cache.
NORMALIZE = """\
function envoy_on_request(handle)
  local headers = handle:headers()
  local metadata = handle:streamInfo():dynamicMetadata()
  -- x-model, then model, then the JSON body's model (json_to_metadata, before this filter).
  local model = headers:get("x-model") or headers:get("model")
  if model == nil or model == "" then
    model = (metadata:get("spillover") or {}).model
  end
  if type(model) == "string" and model ~= "" then
    -- For the 404 of a model no header can carry (too long for a model name, control characters).
    metadata:set("spillover", "model", model)
    if #model <= 253 and not string.find(model, "%c") and headers:get("x-model") ~= model then
      headers:replace("x-model", model)
    end
  end
  local profile = headers:get("config-profile") or headers:get("x-aibrix-config-profile")
  if profile ~= nil and profile ~= "" and headers:get("config-profile") ~= profile then
    headers:replace("config-profile", profile)
  end
  -- Clients must not pick their own prefix-cache affinity (routes without Lua remove it themselves).
  headers:remove("x-spillover-prefix-hash")
end
"""

# Enabled per route (LuaPerRoute name + filter_context) for prefix-cache. Envoy's Lua has no JSON
# parser, so the prompt is located textually: the first N characters from the "messages" (chat) or
# "prompt" (completions) key onwards. Two 32-bit polynomial hashes in plain arithmetic (exact in
# doubles, no bit library needed) give a 64-bit key; Envoy's consistent hash then places it.
PREFIX_HASH = """\
function envoy_on_request(handle)
  local n = 256
  -- filterContext() is userdata in Envoy 1.40: pairs() works, indexing returns nil.
  for key, value in pairs(handle:filterContext()) do
    if key == "prefix_chars" then
      n = tonumber(value) or n
    end
  end
  -- Whatever the client sent is dropped: only this script sets the affinity.
  handle:headers():remove("x-spillover-prefix-hash")
  local body = handle:body()
  if body == nil then
    return
  end
  local raw = body:getBytes(0, body:length())
  local start = string.find(raw, '"messages"', 1, true) or string.find(raw, '"prompt"', 1, true)
  if start == nil then
    return
  end
  local chunk = string.sub(raw, start, start + n - 1)
  local h1, h2 = 5381, 0
  for i = 1, #chunk do
    local b = string.byte(chunk, i)
    h1 = (h1 * 33 + b) % 4294967296
    h2 = (h2 * 65599 + b) % 4294967296
  end
  handle:headers():replace("x-spillover-prefix-hash", string.format("%08x%08x", h1, h2))
end
"""

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/-_.~")


def lua_string(value: str) -> str:
    """A Lua string literal for any text: every unsafe byte as a decimal escape, so no quoting bug
    can turn a configured value into code."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        out.append(char if char in _SAFE else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def path_prefix(prefix: str) -> str:
    """Upstream filter on a remote cluster: prepend the backend's path prefix. The route's
    prefix_rewrite can't be used because it would apply to the local share of a weighted split too,
    and header_mutation refuses to touch ``:path`` (Envoy 1.40: ":-prefixed or host headers may not
    be modified")."""
    # Upstream filters see the request headers every attempt left behind: a retry must not prefix twice.
    return (
        "function envoy_on_request(handle)\n"
        "  local headers = handle:headers()\n"
        "  local metadata = handle:streamInfo():dynamicMetadata()\n"
        f"  local original = (metadata:get({lua_string(UPSTREAM_STATE)}) or {{}}).path\n"
        "  if original == nil then\n"
        '    original = headers:get(":path") or "/"\n'
        f'    metadata:set({lua_string(UPSTREAM_STATE)}, "path", original)\n'
        "  end\n"
        f'  headers:replace(":path", {lua_string(prefix)} .. original)\n'
        "end\n"
    )


# Dynamic metadata namespace where the upstream filters keep what the client sent, across attempts.
UPSTREAM_STATE = "spillover.upstream"


def client_host(namespace: str, host_key: str, original_host_key: str) -> str:
    """Upstream filter of a failover aggregate whose remote changes only the host (no path prefix,
    headers or token): Envoy rewrites :authority natively on the remote's attempts (route
    `auto_host_rewrite`, the remote endpoint's `hostname`), and that rewrite, with the
    x-envoy-original-host it sets, stays in the header map the attempts share. The aggregates run
    this script only on a local attempt that finds the remote's host there (match_delegate, see
    failover.py), i.e. a retry after a remote attempt: it puts back what the client sent, saved by
    the route before the first attempt in dynamic metadata `namespace` at `host_key` and
    `original_host_key` (common.client_host_config); a missing x-envoy-original-host is removed."""
    state = lua_string(namespace)
    original = lua_string("x-envoy-original-host")
    return "\n".join(
        [
            "function envoy_on_request(handle)",
            "  local headers = handle:headers()",
            f"  local saved = handle:streamInfo():dynamicMetadata():get({state}) or {{}}",
            f"  local authority = saved[{lua_string(host_key)}]",
            "  if authority ~= nil then",
            '    headers:replace(":authority", authority)',
            "  end",
            f"  local original = saved[{lua_string(original_host_key)}]",
            "  if original == nil then",
            f"    headers:remove({original})",
            "  else",
            f"    headers:replace({original}, original)",
            "  end",
            "end",
            "",
        ]
    )


def remote_side(
    side_header: str,
    remote_value: str,
    prefix: str,
    authority: str | None,
    headers: tuple[tuple[str, str], ...],
    keep_authorization: bool,
    no_authorization: str = "",
) -> str:
    """Upstream filter of a failover aggregate whose remote needs more than its host (a path prefix,
    headers or a token; one that needs only its host gets it natively, see `client_host`): each
    attempt that goes to the remote (the side header, set from the chosen host's metadata for the
    remote's attempts only, says so) gets the remote's path prefix, host and headers; every other
    attempt gets the request exactly as the client sent it.

    Upstream filters of one request share its header map across attempts, so the first remote attempt
    keeps what the client sent in dynamic metadata (`client`) and every later attempt starts from it:
    a retry that moves from the remote to the local side carries nothing meant for the remote. The
    aggregates skip this script (match_delegate, see failover.py) on a local attempt that no remote
    attempt came before, since it would find the headers as the client sent them and touch nothing.

    `keep_authorization` (the remote has a token) also keeps the client's Authorization and removes it
    on the remote's attempts, so that the credential injector after this script (it adds the token only
    where there is no Authorization) adds it there. `no_authorization` is the placeholder the aggregates
    give a request without one (see failover.py): saved as none, and put back for a local attempt.
    """
    touched = [":path", ":authority", *(name for name, _ in headers)]
    if keep_authorization:
        touched.append("authorization")
    names = ", ".join(lua_string(name) for name in dict.fromkeys(touched))
    apply = []
    if prefix:
        apply.append(f'    headers:replace(":path", {lua_string(prefix)} .. (saved[":path"] or "/"))')
    if authority:
        apply.append(f'    headers:replace(":authority", {lua_string(authority)})')
    apply += [f"    headers:replace({lua_string(name)}, {lua_string(value)})" for name, value in headers]
    save_placeholder, restore_none = [], "headers:remove(name)"
    if keep_authorization:
        apply.append('    headers:remove("authorization")')
        save_placeholder = [
            f"      if saved.authorization == {lua_string(no_authorization)} then saved.authorization = nil end"
        ]
        restore_none = (
            f'if name == "authorization" then headers:replace(name, {lua_string(no_authorization)})'
            " else headers:remove(name) end"
        )
    state = lua_string(UPSTREAM_STATE)
    return "\n".join(
        [
            "function envoy_on_request(handle)",
            "  local headers = handle:headers()",
            "  local metadata = handle:streamInfo():dynamicMetadata()",
            f"  local remote = headers:get({lua_string(side_header)}) == {lua_string(remote_value)}",
            f"  local saved = (metadata:get({state}) or {{}}).client",
            "  if remote then",
            f"    headers:remove({lua_string(side_header)})",
            "    if saved == nil then",
            "      saved = {}",
            f"      for _, name in ipairs({{{names}}}) do",
            "        saved[name] = headers:get(name)",
            "      end",
            *save_placeholder,
            f'      metadata:set({state}, "client", saved)',
            "    end",
            *apply,
            "  elseif saved ~= nil then",
            f"    for _, name in ipairs({{{names}}}) do",
            f"      if saved[name] == nil then {restore_none} else headers:replace(name, saved[name]) end",
            "    end",
            "  end",
            "end",
            "",
        ]
    )

"""Lua sources run inside Envoy. Kept tiny: each does one thing Envoy has no native filter for."""

from __future__ import annotations

__all__ = ["NORMALIZE", "PREFIX_HASH", "PREFIX_HASH_NAME", "lua_string", "path_prefix"]

PREFIX_HASH_NAME = "prefix_hash"

# Runs first on every request. header_to_metadata cannot do this job: it resolves the route (to read
# its per-route config) before writing the metadata and never clears the route cache, so a
# header-only request stayed on the "no model" route in Envoy 1.40.
NORMALIZE = """\
function envoy_on_request(handle)
  local headers = handle:headers()
  local metadata = handle:streamInfo():dynamicMetadata()
  -- Header before body: json_to_metadata, next in the chain, keeps a value already present.
  local model = headers:get("x-model") or headers:get("model")
  if model ~= nil and model ~= "" then
    metadata:set("spillover", "model", model)
  end
  local profile = headers:get("config-profile") or headers:get("x-aibrix-config-profile")
  if profile ~= nil and profile ~= "" then
    metadata:set("spillover", "profile", profile)
  end
  -- A header change makes this filter clear the route cache (clear_route_cache), so the route is
  -- chosen again with the metadata above; dropping this header also stops clients from picking
  -- their own prefix-cache affinity.
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
    return (
        "function envoy_on_request(handle)\n"
        "  local headers = handle:headers()\n"
        f'  headers:replace(":path", {lua_string(prefix)} .. (headers:get(":path") or "/"))\n'
        "end\n"
    )

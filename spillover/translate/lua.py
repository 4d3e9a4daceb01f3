"""Lua sources run inside Envoy. Kept tiny: each does one thing Envoy has no native filter for."""

from __future__ import annotations

__all__ = [
    "BODY_MODEL",
    "BODY_MODEL_NAME",
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
BODY_MODEL_NAME = "body_model"

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

# The body path (the `body-model` route enables it; json_to_metadata is off there): the JSON body's
# top-level "model" into x-model, the route then chosen again (clear_route_cache). json_to_metadata
# parses the whole body into a tree, ~90 Envoy instructions per byte (benchmarks/results/
# datapath-body-breakdown.md); this walks only the top-level object: string contents, where a
# chat body's bytes are, are skipped with plain string.find (memchr speed), nested values by their
# brackets and strings. What it hands on is what json_to_metadata and the header copy did: the model (a
# string, a number or a boolean, as text) in x-model, or in metadata spillover.model when no header can
# carry it (for the 404 that names it); of duplicate keys the last; nothing for "", null, an object or
# an array, a body that is not a JSON object, a broken string or escape, or a top level that does not
# close. Unlike json_to_metadata it does not check the grammar inside nested values (nor control
# characters in strings other than the model): a body broken only there is routed by its model, and
# its upstream's parser answers it.
# On every body-routed request, so no Lua patterns on the common path: LuaJIT does not compile a
# pattern find, and each cost ~3,500 Envoy instructions (a third of the script's cost at 405 bytes,
# benchmarks/results/datapath-body-lua.md); plain finds and byte loops compile. The loops that
# rarely run more than once (an escaped quote, more than one space) sit in functions of their own,
# off the common path: an inner loop aborts the trace of the loop that calls it.
BODY_MODEL = r"""
-- This filter's Lua state (one per worker) holds little but the script (~90 KiB), and each request
-- leaves its coroutine, wrappers and body copy behind: at the default pause (200: a full cycle
-- whenever the heap doubles) the collector marks the whole state every few dozen requests. A cycle
-- at ten times the live heap, about 1 MiB a worker (0.2 MiB at the default), saves ~4,000 Envoy
-- instructions a request at 405 bytes (benchmarks/results/datapath-body-lua.md).
collectgarbage("setpause", 1000)
local find, sub, byte, char, floor = string.find, string.sub, string.byte, string.char, math.floor
local ESCAPES = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}

-- The index of the quote that closes the string whose contents start at i. Loop-free unless the
-- quote found is escaped (LuaJIT aborts a trace at an inner loop: the callers' loops stay compiled).
local function escaped_end(s, q)
  while true do
    local b, n = q - 1, 0
    while byte(s, b) == 92 do n = n + 1; b = b - 1 end
    if n % 2 == 0 then return q end
    q = find(s, '"', q + 1, true)
    if q == nil then return nil end
  end
end

local function string_end(s, i)
  local q = find(s, '"', i, true)
  if q ~= nil and byte(s, q - 1) == 92 then return escaped_end(s, q) end
  return q
end

local function utf8(cp)
  if cp < 0x80 then return char(cp) end
  if cp < 0x800 then return char(0xC0 + floor(cp / 64), 0x80 + cp % 64) end
  if cp < 0x10000 then return char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64) end
  return char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64, 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
end

-- A JSON string's contents as text; nil if they are not valid JSON (a control character, a bad escape).
-- (A byte loop for the control characters, not a pattern: see above.)
local function unescape(raw)
  for k = 1, #raw do
    if byte(raw, k) < 32 then return nil end
  end
  if not find(raw, "\\", 1, true) then return raw end
  local out, i = {}, 1
  while true do
    local j = find(raw, "\\", i, true)
    if j == nil then out[#out + 1] = sub(raw, i); return table.concat(out) end
    out[#out + 1] = sub(raw, i, j - 1)
    local c = sub(raw, j + 1, j + 1)
    if c == "u" then
      local hex = sub(raw, j + 2, j + 5)
      local cp = find(hex, "^%x%x%x%x$") and tonumber(hex, 16)
      if not cp then return nil end
      i = j + 6
      if cp >= 0xD800 and cp <= 0xDFFF then
        local low = sub(raw, i, i + 1) == "\\u" and find(sub(raw, i + 2, i + 5), "^%x%x%x%x$")
          and tonumber(sub(raw, i + 2, i + 5), 16)
        if cp > 0xDBFF or not low or low < 0xDC00 or low > 0xDFFF then return nil end
        cp, i = 0x10000 + (cp - 0xD800) * 1024 + (low - 0xDC00), i + 6
      end
      out[#out + 1] = utf8(cp)
    else
      local e = ESCAPES[c]
      if e == nil then return nil end
      out[#out + 1], i = e, j + 2
    end
  end
end

-- JSON whitespace from i on: the index and the byte after it. One space (", ", ": ") without a loop.
local function more_space(s, i)
  local c = byte(s, i)
  while c == 32 or c == 10 or c == 13 or c == 9 do i = i + 1; c = byte(s, i) end
  return i, c
end

local function skip_space(s, i)
  local c = byte(s, i)
  if c == 32 then i = i + 1; c = byte(s, i) end
  if c == 32 or c == 10 or c == 13 or c == 9 then return more_space(s, i) end
  return i, c
end

-- The index after the value that starts at i: a string to its closing quote (string.find, memchr
-- speed), an object or an array by its brackets byte by byte outside its strings, a number or a
-- literal to the next delimiter. (Byte loops rather than patterns: LuaJIT compiles them.)
local function skip_value(s, i)
  local c = byte(s, i)
  if c == 34 then
    local e = string_end(s, i + 1)
    return e and e + 1
  end
  if c == 123 or c == 91 then
    local depth = 0
    while c ~= nil do
      if c == 34 then
        local e = string_end(s, i + 1)
        if e == nil then return nil end
        i = e + 1
      else
        if c == 123 or c == 91 then
          depth = depth + 1
        elseif c == 125 or c == 93 then
          depth = depth - 1
          if depth == 0 then return i + 1 end
        end
        i = i + 1
      end
      c = byte(s, i)
    end
    return nil
  end
  local j = i
  while c ~= nil and c ~= 44 and c ~= 125 and c ~= 93 and c ~= 32 and c ~= 10 and c ~= 13 and c ~= 9 do
    j = j + 1
    c = byte(s, j)
  end
  return j > i and j or nil
end

-- The top-level "model" as text (nil: none, or not a JSON object).
local function body_model(s)
  local i, c = skip_space(s, 1)
  if c ~= 123 then return nil end
  i, c = skip_space(s, i + 1)
  if c == 125 then return nil end
  local model = nil
  while true do
    if c ~= 34 then return nil end
    local e = string_end(s, i + 1)
    if e == nil then return nil end
    -- Only a short key can be "model", escapes and all (\u006d\u006f\u0064\u0065\u006c is 30 bytes).
    local key = nil
    if e - i - 1 <= 30 then
      key = sub(s, i + 1, e - 1)
      if find(key, "\\", 1, true) then
        key = unescape(key)
        if key == nil then return nil end
      end
    end
    i, c = skip_space(s, e + 1)
    if c ~= 58 then return nil end
    i, c = skip_space(s, i + 1)
    local after = skip_value(s, i)
    if after == nil then return nil end
    if key == "model" then
      if c == 34 then
        model = unescape(sub(s, i + 1, after - 2))
        if model == nil then return nil end
      elseif c == 116 or c == 102 then
        local literal = sub(s, i, after - 1)
        model = (literal == "true" or literal == "false") and literal or nil
      elseif c == 45 or (c >= 48 and c <= 57) then
        local number = tonumber(sub(s, i, after - 1))
        if number == nil then return nil end
        model = (number == floor(number) and math.abs(number) < 1e15) and string.format("%d", number)
          or tostring(number)
      else
        model = nil
      end
    end
    i, c = skip_space(s, after)
    if c == 125 then
      i, c = skip_space(s, i + 1)
      if c ~= nil then return nil end
      return model
    end
    if c ~= 44 then return nil end
    i, c = skip_space(s, i + 1)
  end
end

function envoy_on_request(handle)
  local body = handle:body()
  if body == nil then return end
  local model = body_model(body:getBytes(0, body:length()))
  if model == nil or model == "" then return end
  if find(model, "\n", 1, true) or find(model, "\r", 1, true) or find(model, "\0", 1, true) then
    -- No header can carry it: the 404 that names it reads it from metadata (unknown-body-model).
    handle:streamInfo():dynamicMetadata():set("spillover", "model", model)
    handle:clearRouteCache()
  else
    handle:headers():replace("x-model", model)
  end
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

-- wrk script: counts responses by status and prints "status <code>: <count>" at the end
-- (wrk's own "Non-2xx or 3xx responses" line counts only statuses above 399).
--   WRK_PATHS="/a,/b"              requests cycle through these paths
--   WRK_REQUEST_IDS=1              every request carries a unique X-Request-Id (w<thread>-<n>)
--   WRK_COUNT_HEADER=x-name         also count responses by this header's value, for the
--   WRK_HEADER_VALUES="one,two"     values listed (others count as "other"); printed as
--                                   "x-name <value>: <count>"
--   WRK_UNIQUE_HEADER=x-key         every request carries this header with a value of its own:
--   WRK_UNIQUE_PREFIX=k1-           <prefix><thread>-<pad><n> (n = 1, 2, ... per thread;
--   WRK_UNIQUE_PAD=0                pad: that many "x", to make long values); done() prints
--                                   "unique x-key: <requests made> (thread 1 last <value>)"

local paths = {}
for p in string.gmatch(os.getenv("WRK_PATHS") or "", "[^,]+") do
  paths[#paths + 1] = p
end
local count_header = string.lower(os.getenv("WRK_COUNT_HEADER") or "")
local header_values = {}
for v in string.gmatch(os.getenv("WRK_HEADER_VALUES") or "", "[^,]+") do
  header_values[#header_values + 1] = v
end
header_values[#header_values + 1] = "other"

local request_ids = os.getenv("WRK_REQUEST_IDS") == "1"
local unique_header = os.getenv("WRK_UNIQUE_HEADER") or ""
local unique_prefix = (os.getenv("WRK_UNIQUE_PREFIX") or "") .. "%d-" .. string.rep("x", tonumber(os.getenv("WRK_UNIQUE_PAD") or "0"))
unique_n = 0 -- a global, so done() can read it (thread:get)
if #paths > 0 or request_ids or unique_header ~= "" then
  local i = 0
  request = function()
    i = i + 1
    if request_ids then
      wrk.headers["X-Request-Id"] = "w" .. (tid or 1) .. "-" .. i
    end
    if unique_header ~= "" then
      unique_n = i
      wrk.headers[unique_header] = string.format(unique_prefix, tid or 1) .. i
    end
    return wrk.format(nil, #paths > 0 and paths[(i % #paths) + 1] or nil)
  end
end

local function header(headers, name)
  local v = headers[name]
  if v then return v end
  for k, val in pairs(headers) do
    if string.lower(k) == name then return val end
  end
  return nil
end

-- One global per status seen ("s200", "s429", ...) and per header value ("h_old", ...): wrk
-- copies plain values between threads, so done() reads them with thread:get.
response = function(status, headers, body)
  local k = "s" .. status
  _G[k] = (_G[k] or 0) + 1
  if count_header ~= "" then
    local v = header(headers, count_header) or "other"
    local known = false
    for _, hv in ipairs(header_values) do
      if hv == v then known = true end
    end
    k = "h_" .. (known and v or "other")
    _G[k] = (_G[k] or 0) + 1
  end
end

local threads = {}
setup = function(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads)
end

local function total(name)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + (t:get(name) or 0)
  end
  return n
end

done = function(summary, latency, requests)
  for code = 100, 599 do
    local n = total("s" .. code)
    if n > 0 then
      io.write(string.format("status %d: %d\n", code, n))
    end
  end
  if count_header ~= "" then
    for _, v in ipairs(header_values) do
      io.write(string.format("%s %s: %d\n", count_header, v, total("h_" .. v)))
    end
  end
  if unique_header ~= "" then
    local n1 = threads[1] and threads[1]:get("unique_n") or 0
    io.write(string.format("unique %s: %d (thread 1 last %s%d)\n", unique_header, total("unique_n"),
      string.format(unique_prefix, 1), n1))
  end
end

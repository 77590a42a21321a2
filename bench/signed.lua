-- wrk script: cycles through pre-signed requests (signed by bench/payloads.py, as wrk's
-- Lua has no HMAC) and gives every request its own X-GitHub-Delivery id.
-- Arguments after "--": <data file> <run id> <max requests per thread>

local threads = {}
local counter = 1

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  heads, tails = {}, {}
  for head, tail in data:gmatch("([^%z]*)%z([^\1]*)\1") do
    heads[#heads + 1] = head
    tails[#tails + 1] = tail
  end
  prefix = args[2] .. "-" .. tid .. "-"
  limit = tonumber(args[3])
  n, sent, s202, s200, sother = 0, 0, 0, 0, 0
end

function request()
  if sent >= limit then
    wrk.thread:stop()
  end
  local i = (sent % #heads) + 1
  sent = sent + 1
  return heads[i] .. prefix .. sent .. tails[i]
end

function response(status, headers, body)
  if status == 202 then
    s202 = s202 + 1
  elseif status == 200 then
    s200 = s200 + 1
  else
    sother = sother + 1
  end
end

function done(summary, latency, requests)
  local sent_total, a, d, o = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    sent_total = sent_total + t:get("sent")
    a = a + t:get("s202")
    d = d + t:get("s200")
    o = o + t:get("sother")
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"duration_us\":%d,\"requests\":%d,\"sent\":%d,\"status_202\":%d," ..
    "\"status_200\":%d,\"status_other\":%d,\"connect_errors\":%d,\"read_errors\":%d," ..
    "\"write_errors\":%d,\"status_errors\":%d,\"timeouts\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"p999_us\":%d,\"max_us\":%d,\"mean_us\":%.1f}\n",
    summary.duration, summary.requests, sent_total, a, d, o, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end

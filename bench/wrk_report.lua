-- wrk script for bench/http.py.
--
-- Pacing (LB_INTERVAL_MS > 0): wrk has no constant-rate mode (wrk2 is not in Debian), but its
-- Lua `delay()` hook returns the milliseconds a connection waits before its next request.
-- Each of the C connections waits an exponentially distributed time with mean
-- LB_INTERVAL_MS = C / R * 1000, so the connections together offer a Poisson stream of R
-- requests/s (independent of each other, no synchronized bursts), as long as the latency is
-- small against the interval. wrk takes whole milliseconds: the wait is rounded up or down at
-- random so that its mean stays exact. The achieved rate is reported next to every figure.
--
-- LB_CLOSE=1 sends "Connection: close": one TCP connection per request (connections/s).
--
-- done() prints one line "JSON {...}" with the totals, the latency percentiles (microseconds)
-- and a CDF (percentile -> latency) for the plots.

local interval_ms = tonumber(os.getenv("LB_INTERVAL_MS") or "0") or 0
local close = os.getenv("LB_CLOSE") == "1"

function init(args)
   math.randomseed(os.time() + math.floor(os.clock() * 1e6))
   local headers = { ["Host"] = "bench" }
   if close then headers["Connection"] = "close" end
   req = wrk.format("GET", "/", headers)
end

function request()
   return req
end

if interval_ms > 0 then
   function delay()
      local u = math.random()
      if u < 1e-12 then u = 1e-12 end
      local d = -math.log(u) * interval_ms
      local base = math.floor(d)
      if math.random() < d - base then base = base + 1 end
      return base
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local out = {}
   out[#out + 1] = string.format('"requests": %d, "duration_us": %d, "bytes": %d', summary.requests,
      summary.duration, summary.bytes)
   out[#out + 1] = string.format('"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}',
      e.connect, e.read, e.write, e.status, e.timeout)
   out[#out + 1] = string.format('"lat_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}',
      latency.min, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9))
   local cdf = {}
   local ps = {1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97, 98, 99, 99.5, 99.9, 99.99}
   for _, p in ipairs(ps) do
      cdf[#cdf + 1] = string.format("[%s, %d]", p, latency:percentile(p))
   end
   out[#out + 1] = '"cdf": [' .. table.concat(cdf, ", ") .. "]"
   io.write("JSON {" .. table.concat(out, ", ") .. "}\n")
end

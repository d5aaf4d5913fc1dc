#!lua name=klawd_capacity
-- Upstream capacity shared by every replica (gateway/routing/capacity.py): the rests of
-- deployments and the request/token buckets of capped providers. Its own library, apart from
-- klawd.lua's admission functions; the version is in every function name, as there.
-- Every key carries the hash tag {klawd_capacity}: one slot in Redis Cluster, so one call can
-- weigh every deployment of a model. Time is Redis server time (TIME).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket stored as {level, ts}; an absent key is a full bucket (as in klawd.lua).
local function level_of(key, capacity, now)
  local state = redis.call('HMGET', key, 'level', 'ts')
  local level = tonumber(state[1])
  if level == nil then return capacity end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(capacity, level + elapsed * capacity / 60000.0)
end

local function store_level(key, capacity, level, now)
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'ts', now)
  local refill_ms = math.ceil((capacity - level) * 60000.0 / capacity) + 1000
  redis.call('PEXPIRE', key, refill_ms)
end

-- The rests hash: deployment key -> "<until ms> <f|r>" (f: its circuit opened; r: a 429).
local function rest_left(rests, deployment, now)
  local value = redis.call('HGET', rests, deployment)
  if not value then return 0, false end
  local until_ms, kind = string.match(value, '^(%d+) (%a)$')
  until_ms = tonumber(until_ms)
  if until_ms == nil or until_ms <= now then
    redis.call('HDEL', rests, deployment)
    return 0, false
  end
  return until_ms - now, kind == 'f'
end

-- KEYS: the rests hash, then per candidate its provider's request and token buckets
-- ARGV: per candidate (in the balancer's order): deployment key, requests per minute (0: no
--       cap), tokens per minute (0: no cap), the request's token cost
-- -> {the chosen candidate (1-based; 0: none), ms until the earliest is back,
--     1 when every candidate rests because its circuit opened}
-- The first candidate neither resting nor capped is charged one request and the token cost.
local function take(keys, args)
  local now = now_ms()
  local earliest = -1
  local failing = 1
  for i = 1, #args / 4 do
    local deployment = args[4 * i - 3]
    local rpm, tpm, cost = tonumber(args[4 * i - 2]), tonumber(args[4 * i - 1]), tonumber(args[4 * i])
    local requests_key, tokens_key = keys[2 * i], keys[2 * i + 1]
    local wait, rests_failing = rest_left(keys[1], deployment, now)
    local requests, tokens
    if wait > 0 then
      if not rests_failing then failing = 0 end
    else
      if rpm > 0 then
        requests = level_of(requests_key, rpm, now)
        if requests < 1 then wait = math.ceil((1 - requests) * 60000.0 / rpm) end
      end
      if tpm > 0 then
        tokens = level_of(tokens_key, tpm, now)
        if tokens < cost then
          wait = math.max(wait, math.ceil((cost - tokens) * 60000.0 / tpm))
        end
      end
      if wait > 0 then failing = 0 end
    end
    if wait <= 0 then
      if rpm > 0 then store_level(requests_key, rpm, requests - 1, now) end
      if tpm > 0 then store_level(tokens_key, tpm, tokens - cost, now) end
      return {i, 0, 0}
    end
    if earliest < 0 or wait < earliest then earliest = wait end
  end
  if earliest < 0 then return {0, 0, 0} end
  return {0, earliest, failing}
end

-- KEYS: a provider's token bucket; ARGV: tokens per minute, tokens to give back (reserved
-- minus used; negative when the request used more than its estimate)
local function settle(keys, args)
  local tpm, delta = tonumber(args[1]), tonumber(args[2])
  local now = now_ms()
  local level = math.min(tpm, level_of(keys[1], tpm, now) + delta)
  store_level(keys[1], tpm, level, now)
  return 1
end

-- KEYS: the rests hash; ARGV: deployment key, ms, kind (f | r). A later rest wins.
local function rest(keys, args)
  local now = now_ms()
  local until_ms = now + math.ceil(tonumber(args[2]))
  local left = rest_left(keys[1], args[1], now)
  if now + left >= until_ms then return 0 end
  redis.call('HSET', keys[1], args[1], until_ms .. ' ' .. args[3])
  return 1
end

-- KEYS: the rests hash -> flat {deployment key, ms left, 1 if failing, ...}; drops the ended
local function rests(keys, args)
  local now = now_ms()
  local out = {}
  local all = redis.call('HGETALL', keys[1])
  for i = 1, #all, 2 do
    local left, is_failing = rest_left(keys[1], all[i], now)
    if left > 0 then
      out[#out + 1] = all[i]
      out[#out + 1] = left
      out[#out + 1] = is_failing and 1 or 0
    end
  end
  return out
end

redis.register_function('klawd_capacity_take_v1', take)
redis.register_function('klawd_capacity_settle_v1', settle)
redis.register_function('klawd_capacity_rest_v1', rest)
redis.register_function('klawd_capacity_rests_v1', rests)

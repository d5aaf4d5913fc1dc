#!lua name=klawd_v1
-- Klawd Gateway's Redis functions. The version is in every function name: a change of behaviour
-- is a new name (klawd_admit_v2, ...), so replicas of two releases can share one Redis.
-- Every key of one account carries the hash tag {acct_id}: one slot in Redis Cluster.
-- Time is Redis server time (TIME), the one clock every replica shares.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A token bucket stored as {level, ts}; an absent key is a full bucket.
local function level_at(state, capacity, now)
  local level = tonumber(state[1])
  if level == nil then return capacity end
  local elapsed = math.max(0, now - tonumber(state[2]))
  return math.min(capacity, level + elapsed * capacity / 60000.0)
end

local function level_of(key, capacity, now)
  return level_at(redis.call('HMGET', key, 'level', 'ts'), capacity, now)
end

-- A bucket's life once stored at `level`: until it has refilled, and a second more (once
-- refilled the bucket is full, which is what an absent key means)
local function refill_ms(capacity, level)
  return math.ceil((capacity - level) * 60000.0 / capacity) + 1000
end

local function store_level(key, capacity, level, now)
  redis.call('HSET', key, 'level', string.format('%.17g', level), 'ts', now)
  redis.call('PEXPIRE', key, refill_ms(capacity, level))
end

-- KEYS: rpm bucket, rpd quota, tpm bucket, credits
-- ARGV: rpm, rpd, tpm (0: none), reserve_micros, consume (1) or peek (0)
-- -> {outcome (0 admitted, 1 rate limited, 2 insufficient credits), retry_after_ms,
--     rpm remaining, rpm reset ms, rpd remaining, balance}
local function admit(keys, args)
  local now = now_ms()
  local rpm_cap, rpd_cap, tpm_cap = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local reserve, consume = tonumber(args[4]), args[5] == '1'
  local rpm = level_of(keys[1], rpm_cap, now)
  local day = math.floor(now / 86400000)
  local quota = redis.call('HMGET', keys[2], 'day', 'count')
  local used = 0
  if tonumber(quota[1]) == day then used = tonumber(quota[2]) or 0 end
  local tpm = nil
  if tpm_cap > 0 then tpm = level_of(keys[3], tpm_cap, now) end
  local outcome, retry_ms = 0, 0
  if rpm < 1 then
    outcome = 1
    retry_ms = math.max(retry_ms, math.ceil((1 - rpm) * 60000.0 / rpm_cap))
  end
  if used + 1 > rpd_cap then
    outcome = 1
    retry_ms = math.max(retry_ms, (day + 1) * 86400000 - now)
  end
  if tpm ~= nil and tpm < 0 then
    outcome = 1
    retry_ms = math.max(retry_ms, math.ceil(-tpm * 60000.0 / tpm_cap))
  end
  local balance = tonumber(redis.call('GET', keys[4]) or '0')
  if outcome == 0 and reserve > 0 and balance < reserve then outcome = 2 end
  if outcome == 0 and consume then
    rpm = rpm - 1
    used = used + 1
    store_level(keys[1], rpm_cap, rpm, now)
    redis.call('HSET', keys[2], 'day', day, 'count', used)
    redis.call('PEXPIREAT', keys[2], (day + 2) * 86400000)
    if reserve > 0 then balance = redis.call('DECRBY', keys[4], reserve) end
  end
  local reset_ms = math.ceil((rpm_cap - rpm) * 60000.0 / rpm_cap)
  return {outcome, retry_ms, math.floor(math.max(rpm, 0)), reset_ms,
          math.max(rpd_cap - used, 0), balance}
end

-- v2: the API key's share in the same call. A key's spend per period is a hash {s: settled
-- micros, r: reserved by requests in flight}; a budget admits while s + r + reserve <= cap.
-- KEYS: rpm, rpd, tpm, credits (the account's, as v1), then key rpm bucket, key rpd quota, key
--       spend of the day, of the month, in total (all five may be left out: account only)
-- ARGV: rpm, rpd, tpm (0: none), reserve_micros, consume (1) or peek (0), then key rpm (0: none),
--       key rpd (0: none), budget per day, per month, in total (-1: none)
-- -> {outcome (0 admitted, 1 rate limited, 2 insufficient credits, 3 key budget exceeded),
--     retry_after_ms, requests remaining, reset ms, requests/day remaining, balance,
--     requests limit, requests/day limit, 1 if the key's own limits refused}
local SPEND_TTL_MS = {3 * 86400000, 40 * 86400000, 0}

local function admit_core(keys, args, with_key, now)
  local rpm_cap, rpd_cap, tpm_cap = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
  local reserve, consume = tonumber(args[4]), args[5] == '1'
  local krpm_cap, krpd_cap = 0, 0
  if with_key then krpm_cap, krpd_cap = tonumber(args[6]), tonumber(args[7]) end
  local day = math.floor(now / 86400000)
  local outcome, retry_ms, by_key = 0, 0, 0

  local function bucket(key, cap)
    local level = level_of(key, cap, now)
    if level < 1 then
      outcome = 1
      retry_ms = math.max(retry_ms, math.ceil((1 - level) * 60000.0 / cap))
    end
    return level
  end
  -- -> the requests used today, and whether the quota's hash is today's already (then its
  -- expiry, the day after tomorrow's midnight, was set when today's first request wrote it)
  local function quota(key, cap)
    local state = redis.call('HMGET', key, 'day', 'count')
    local used, today = 0, tonumber(state[1]) == day
    if today then used = tonumber(state[2]) or 0 end
    if used + 1 > cap then
      outcome = 1
      retry_ms = math.max(retry_ms, (day + 1) * 86400000 - now)
    end
    return used, today
  end

  local rpm = bucket(keys[1], rpm_cap)
  local used, used_today = quota(keys[2], rpd_cap)
  local tpm = nil
  if tpm_cap > 0 then
    tpm = level_of(keys[3], tpm_cap, now)
    if tpm < 0 then
      outcome = 1
      retry_ms = math.max(retry_ms, math.ceil(-tpm * 60000.0 / tpm_cap))
    end
  end
  local account_outcome = outcome
  local krpm, kused, kused_today = nil, nil, false
  if krpm_cap > 0 then krpm = bucket(keys[5], krpm_cap) end
  if krpd_cap > 0 then kused, kused_today = quota(keys[6], krpd_cap) end
  if outcome == 1 and account_outcome == 0 then by_key = 1 end

  local balance = tonumber(redis.call('GET', keys[4]) or '0')
  if outcome == 0 and reserve > 0 and balance < reserve then outcome = 2 end
  -- only a key with a budget has its reservations counted (settlement records every key's spend)
  local budgeted = false
  if outcome == 0 and with_key then
    for i = 1, 3 do
      local cap = tonumber(args[7 + i])
      if cap >= 0 then
        budgeted = true
        local spend = redis.call('HMGET', keys[6 + i], 's', 'r')
        if (tonumber(spend[1]) or 0) + (tonumber(spend[2]) or 0) + reserve > cap then
          outcome = 3
        end
      end
    end
  end
  if outcome == 0 and consume then
    rpm = rpm - 1
    used = used + 1
    store_level(keys[1], rpm_cap, rpm, now)
    redis.call('HSET', keys[2], 'day', day, 'count', used)
    if not used_today then redis.call('PEXPIREAT', keys[2], (day + 2) * 86400000) end
    if krpm ~= nil then
      krpm = krpm - 1
      store_level(keys[5], krpm_cap, krpm, now)
    end
    if kused ~= nil then
      kused = kused + 1
      redis.call('HSET', keys[6], 'day', day, 'count', kused)
      if not kused_today then redis.call('PEXPIREAT', keys[6], (day + 2) * 86400000) end
    end
    if reserve > 0 then
      balance = redis.call('DECRBY', keys[4], reserve)
      if budgeted then
        for i = 1, 3 do
          -- a period's hash gets its expiry when it is made (settlement sets it too)
          if redis.call('HINCRBY', keys[6 + i], 'r', reserve) == reserve and SPEND_TTL_MS[i] > 0 then
            redis.call('PEXPIRE', keys[6 + i], SPEND_TTL_MS[i])
          end
        end
      end
    end
  end
  -- the tighter of the account's and the key's limits
  local limit, left = rpm_cap, rpm
  if krpm ~= nil and krpm < rpm then limit, left = krpm_cap, krpm end
  local limit_day, left_day = rpd_cap, rpd_cap - used
  if kused ~= nil and krpd_cap - kused < left_day then
    limit_day, left_day = krpd_cap, krpd_cap - kused
  end
  local reset_ms = math.ceil((limit - left) * 60000.0 / limit)
  return {outcome, retry_ms, math.floor(math.max(left, 0)), reset_ms, math.max(left_day, 0),
          balance, limit, limit_day, by_key}
end

local function admit_v2(keys, args)
  return admit_core(keys, args, #keys >= 9, now_ms())
end

-- v3: v2, and the reservation is a hold that expires. What a request reserved is given back
-- when it is settled; a request that is never settled (its worker killed, its admission's reply
-- lost with the connection, or cancelled where the reply could not be waited for) would keep it
-- for good. So each admission that reserves records a hold in the account's sorted set of
-- holds, by expiry: "id|micros" for the account's credit, "id|micros|key id|day" when the
-- API key's budget periods of that day hold it too. Holds past their expiry are given back
-- (at most HOLDS_RELEASED per call) by the account's settlements (settle_v6, once per batch)
-- and by an admission that the credit or the key's budget would refuse, before it decides
-- again. Settling removes the request's hold; an entry whose hold was given back already moves
-- the balance by its cost alone.
-- KEYS: as v2, then the account's holds
-- ARGV: as v2, then the hold's id, its length in ms
-- -> as v2, then the hold recorded (its member, which settle_v6 is given back; '' if none),
--    then how many expired holds it gave back
local HOLDS_RELEASED = 16
local LEASE = 76  -- 'L', the first byte of a lease's hold (admit_lease_v1)

-- Gives back the account's expired holds (credits: the account's credits key). How many.
local function release_holds(holds, credits, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, HOLDS_RELEASED)
  local account = string.sub(credits, 1, -9)  -- the key without ':credits'
  for _, hold in ipairs(expired) do
    local micros, key_id, day = string.match(hold, '^[^|]*|(%d+)|?([^|]*)|?([^|]*)$')
    if string.byte(hold, 1) == LEASE then
      -- a lease's hold (admit_lease_v1): what it holds now is in the account's leases hash
      local id = string.match(hold, '^[^|]*')
      micros = redis.call('HGET', account .. ':leases', id) or '0'
      redis.call('HDEL', account .. ':leases', id)
    end
    redis.call('INCRBY', credits, micros)
    if key_id ~= '' then
      local base = account .. ':kspend:' .. key_id
      for _, spend in ipairs({base .. ':d:' .. day, base .. ':m:' .. string.sub(day, 1, 7),
                              base .. ':t'}) do
        -- (a period's hash that expired meanwhile has nothing reserved to give back)
        if redis.call('EXISTS', spend) == 1
            and redis.call('HINCRBY', spend, 'r', '-' .. micros) < 0 then
          redis.call('HSET', spend, 'r', 0)
        end
      end
    end
    redis.call('ZREM', holds, hold)
  end
  return #expired
end

-- KEYS: account hash, credits, holds. An account and its balance, its expired holds given
-- back first: an idle account's balance would otherwise show what dead requests reserved until
-- its next settlement.
-- -> {HGETALL of the account (flat), credits (false if none), how many holds it gave back}
local function account_v1(keys, args)
  local released = release_holds(keys[3], keys[2], now_ms())
  return {redis.call('HGETALL', keys[1]), redis.call('GET', keys[2]), released}
end

-- The member of the hold an admission records: "id|micros", and "|key id|day" after it when the
-- key's budget periods of that day hold it too (a key with a budget has the reservation in all
-- three of its spend periods, as v2).
local function hold_member(keys, args, with_key, reserve)
  local hold = args[#args - 1] .. '|' .. string.format('%d', reserve)
  if with_key and (tonumber(args[8]) >= 0 or tonumber(args[9]) >= 0
                   or tonumber(args[10]) >= 0) then
    local key_id, day = string.match(keys[7], ':kspend:(.+):d:([^:]+)$')
    hold = hold .. '|' .. key_id .. '|' .. day
  end
  return hold
end

local function admit_v3_at(keys, args, now)
  local n, m = #keys, #args
  local holds, with_key = keys[n], n >= 10
  local reply = admit_core(keys, args, with_key, now)
  local released = 0
  if reply[1] == 2 or reply[1] == 3 then
    released = release_holds(holds, keys[4], now)
    if released > 0 then
      reply = admit_core(keys, args, with_key, now)  -- a refusal took nothing: decide again
    end
  end
  local reserve = tonumber(args[4])
  reply[10] = ''
  if reply[1] == 0 and args[5] == '1' and reserve > 0 then
    -- (hold_member's, inline: a Lua call here is ~1 K instructions an admission on the single
    -- Redis's path, which v3 serves: decision 0005, thirty-fourth pass)
    local hold = args[m - 1] .. '|' .. string.format('%d', reserve)
    if with_key and (tonumber(args[8]) >= 0 or tonumber(args[9]) >= 0
                     or tonumber(args[10]) >= 0) then
      local key_id, day = string.match(keys[7], ':kspend:(.+):d:([^:]+)$')
      hold = hold .. '|' .. key_id .. '|' .. day
    end
    redis.call('ZADD', holds, now + tonumber(args[m]), hold)
    reply[10] = hold
  end
  reply[11] = released
  return reply
end

local function admit_v3(keys, args)
  return admit_v3_at(keys, args, now_ms())  -- one TIME for the whole call
end

-- Admission leases (decision 0003, "Admission leases (issue 19zl)"): a worker that admits many
-- requests of one account and key asks, with one request's admission, for `count` more: taken
-- now from the same buckets and quotas (the account's and the key's requests per minute and per
-- day) and `credit` micros from the balance (and the key's budgets), which the worker then
-- admits in process, one request at a time, until they are used or the lease's life is over;
-- what is unused comes back with lease_return_v1. Granted only far from every bound: each
-- dimension (the requests this minute and today, the balance, a key's budgets) has, after the
-- request, LEASE_HEADROOM leases' worth left (so after the lease LEASE_HEADROOM - 1); never to
-- a plan with a token limit (its "not in debt" rule is decided per request). Near a bound
-- every admission is admit_v3's, exact.
-- The lease's credit is a hold (member "<lease id>|0", and "|<key id>|<day>" after it when the
-- key's budget periods hold it too; the id starts with "L"), its amount in the account's leases
-- hash (id -> micros held): each request settled under it takes its reservation out
-- (settle_entries), the give-back takes the unused rest; expired (its worker died) it is given
-- back whole by release_holds. The requests of a worker that died holding a lease are not
-- given back: the minute's bucket refills, the day's quota keeps them as used.
-- KEYS: as admit_v3, then the account's leases hash
-- ARGV: as admit_v3, then the lease's requests, its credit (micros), its life (ms), its id
-- -> as admit_v3, then the requests leased (0: no lease), the lease's life (ms), Redis's day,
--    the lease's hold (its member; '' when it holds no credit)
local LEASE_HEADROOM = 4

local function lease_member(hold)
  -- the lease's id, and its member in the holds (a bare id: "<id>|0")
  local id = string.match(hold, '^[^|]*')
  if id == hold then return id, id .. '|0' end
  return id, hold
end


local function take_requests(key, cap, count, now)
  store_level(key, cap, level_of(key, cap, now) - count, now)
end

local function admit_lease(keys, args)
  local n, m = #keys, #args
  local now = now_ms()
  local v3keys, v3args = {}, {}
  for i = 1, n - 1 do v3keys[i] = keys[i] end
  for i = 1, m - 4 do v3args[i] = args[i] end
  local reply = admit_v3_at(v3keys, v3args, now)
  local day = math.floor(now / 86400000)
  reply[12], reply[13], reply[14] = 0, 0, day
  local count, credit = tonumber(args[m - 3]), tonumber(args[m - 2])
  -- within the day it is granted in (the day's quota it is taken from)
  local life = math.min(tonumber(args[m - 1]), (day + 1) * 86400000 - now - 1)
  if reply[1] ~= 0 or args[5] ~= '1' or count <= 0 or life <= 0 then return reply end
  if tonumber(args[3]) > 0 then return reply end  -- a token limit: exact admissions only
  local with_key = n - 1 >= 10
  -- after this request: the tighter of the requests left this minute, today, and the balance
  local room = LEASE_HEADROOM * count
  if reply[3] < room or reply[5] < room or reply[6] < LEASE_HEADROOM * credit then
    return reply
  end
  -- and the key's budgets (settled, reserved and this request's reservation within each cap)
  local budgeted = false
  if with_key then
    for i = 1, 3 do
      local cap = tonumber(args[7 + i])
      if cap >= 0 then
        budgeted = true
        local spend = redis.call('HMGET', keys[6 + i], 's', 'r')
        if (tonumber(spend[1]) or 0) + (tonumber(spend[2]) or 0)
            + LEASE_HEADROOM * credit > cap then
          return reply
        end
      end
    end
  end
  take_requests(keys[1], tonumber(args[1]), count, now)
  redis.call('HINCRBY', keys[2], 'count', count)
  if with_key then
    local krpm_cap, krpd_cap = tonumber(args[6]), tonumber(args[7])
    if krpm_cap > 0 then take_requests(keys[5], krpm_cap, count, now) end
    if krpd_cap > 0 then redis.call('HINCRBY', keys[6], 'count', count) end
  end
  reply[15] = ''
  if credit > 0 then
    local id = args[m]
    local member = id .. '|0'
    redis.call('DECRBY', keys[4], string.format('%d', credit))
    if budgeted then
      -- the key's budget periods of the day hold it too, as a request's reservation (admit_v3)
      for i = 1, 3 do
        if redis.call('HINCRBY', keys[6 + i], 'r', string.format('%d', credit)) == credit
            and SPEND_TTL_MS[i] > 0 then
          redis.call('PEXPIRE', keys[6 + i], SPEND_TTL_MS[i])
        end
      end
      local key_id, key_day = string.match(keys[7], ':kspend:(.+):d:([^:]+)$')
      member = member .. '|' .. key_id .. '|' .. key_day
    end
    redis.call('HSET', keys[n], id, string.format('%d', credit))
    redis.call('ZADD', keys[n - 1], now + tonumber(args[m - 4]), member)
    reply[15] = member
  end
  reply[12], reply[13] = count, life
  return reply
end

local function give_back_requests(key, cap, count, now)
  local level = level_of(key, cap, now)
  store_level(key, cap, math.min(cap, level + count), now)
end

local function give_back_quota(key, count, day)
  local quota = redis.call('HMGET', key, 'day', 'count')
  if tonumber(quota[1]) == day then
    redis.call('HSET', key, 'count', math.max(0, (tonumber(quota[2]) or 0) - count))
  end
end

-- What a lease did not use comes back: its requests to the minute's buckets (never beyond
-- their capacity) and to the day's quotas (if still the day it was granted in), its credit to
-- the balance and the key's budget periods (unless its hold expired and was given back already).
-- KEYS: rpm, rpd, credits, holds, leases, then the key's rpm and rpd (when the key has limits)
-- ARGV: the lease's hold (its member, or its id), requests unused, credit unused, rpm, the day
--       it was granted (admit_lease's reply), key rpm (0: none), key rpd (0: none)
-- -> 1 if its credit was given back, 0 if the hold had gone already
local function lease_return(keys, args)
  local now = now_ms()
  local unused, credit, day = tonumber(args[2]), tonumber(args[3]), tonumber(args[5])
  if unused > 0 then
    give_back_requests(keys[1], tonumber(args[4]), unused, now)
    give_back_quota(keys[2], unused, day)
    if #keys >= 7 then
      if tonumber(args[6]) > 0 then give_back_requests(keys[6], tonumber(args[6]), unused, now) end
      if tonumber(args[7]) > 0 then give_back_quota(keys[7], unused, day) end
    end
  end
  local id, member = lease_member(args[1])
  if redis.call('HEXISTS', keys[5], id) == 0 then return 0 end
  if credit > 0 then
    redis.call('INCRBY', keys[3], string.format('%d', credit))
    local _, key_id, key_day = string.match(member, '^[^|]*|(%d+)|?([^|]*)|?([^|]*)$')
    if key_id ~= '' then  -- and to the key's budget periods of its day
      local base = string.sub(keys[3], 1, -9) .. ':kspend:' .. key_id
      for _, spend in ipairs({base .. ':d:' .. key_day,
                              base .. ':m:' .. string.sub(key_day, 1, 7), base .. ':t'}) do
        if redis.call('EXISTS', spend) == 1
            and redis.call('HINCRBY', spend, 'r', string.format('%d', -credit)) < 0 then
          redis.call('HSET', spend, 'r', 0)
        end
      end
    end
    if redis.call('HINCRBY', keys[5], id, string.format('%d', -credit)) <= 0 then
      redis.call('HDEL', keys[5], id)
      redis.call('ZREM', keys[4], member)
    end
  end
  return 1
end

-- KEYS: tpm bucket; ARGV: tpm, tokens, and (v2) kept_ms. May leave the bucket in debt.
-- kept_ms (v2): the tokens are the shortfall of a bucket that a worker kept while the store was
-- not reached (gateway/token_charges.py), started full kept_ms ago and refilled since; they are
-- taken from this bucket's level as it was then (a level stored later than that, by a charge
-- meanwhile, as it stands), so the refill since is not counted twice and a bucket already short
-- when the outage began stays as short. v1: kept_ms 0.
local function charge_tokens(keys, args)
  local now = now_ms()
  local cap, amount = tonumber(args[1]), tonumber(args[2])
  local kept = tonumber(args[3] or '0')
  local level = level_of(keys[1], cap, now - kept) - amount
  store_level(keys[1], cap, level, now)
  return 1
end

-- How long klawd_charge_tokens_v3 remembers a charge's id: 5 minutes, past the latest a worker
-- sends a kept charge again (gateway/token_charges.py's KEPT_LIFE_S, 2 minutes after its first
-- charge), with room for the command timeouts and the worker's clock against this one.
local CHARGE_ID_MS = 300000

-- v3: v2, idempotent. KEYS: tpm bucket, the account's charge ids (sorted set: id -> the Redis
-- time it was first seen, trimmed to CHARGE_ID_MS on every call). ARGV: tpm, tokens, kept_ms,
-- then the charges the tokens are made of, an id and its tokens each (one for an answer's
-- charge, every kept one for a late charge). A charge whose id is remembered ran already: its
-- tokens are not taken again (the amount lessened by them, never below 0), so a charge whose
-- reply was lost can be sent again. -> the tokens taken
local function charge_tokens_v3(keys, args)
  local now = now_ms()
  local amount = tonumber(args[2])
  if #args > 3 then
    redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', now - CHARGE_ID_MS)
    for i = 4, #args, 2 do
      if redis.call('ZADD', keys[2], 'NX', now, args[i]) == 0 then
        amount = amount - tonumber(args[i + 1])
      end
    end
    redis.call('PEXPIRE', keys[2], CHARGE_ID_MS)
  end
  if amount <= 0 then return 0 end
  local cap, kept = tonumber(args[1]), tonumber(args[3])
  store_level(keys[1], cap, level_of(keys[1], cap, now - kept) - amount, now)
  return amount
end

-- v4: v3 at a lower cost (decision 0005, thirty-third pass). KEYS: tpm bucket, the account's
-- charge ids (klawd:acct:{A}:charge_ids: a set of v4's own, since a charge is only ever sent
-- again by the worker that made it, through the same function). ARGV: tpm, tokens, kept_ms,
-- window_ms (how long an id is remembered at least), then the charges, an id and its tokens
-- each, as v3. The set's trim and expiry (its upkeep) run only on a call at or past the time
-- kept in the bucket (`upkeep`, the bucket living until then at least), which is then set a
-- tenth of the window later: the set lives the window and that tenth past its last upkeep, so
-- every id added meanwhile lives the window at least, and ids past the window are gone by the
-- next upkeep. A bucket without that time (new, expired, written by v1-v3 only) runs it. An
-- id's score is minus the time it was first seen: a new id goes at the set's head, which a
-- small set (a listpack) inserts at without walking it (the upkeep's trim walks it instead).
-- Redis's time goes to the commands as TIME's own text: a Lua number given to redis.call is
-- printed with snprintf (3-4K instructions each). -> the tokens taken
local function charge_tokens_v4(keys, args)
  local t = redis.call('TIME')
  local now_text = t[1] .. string.sub('00000' .. t[2], -6, -4)
  local now = tonumber(now_text)
  local cap, amount = tonumber(args[1]), tonumber(args[2])
  local kept, window = tonumber(args[3]), tonumber(args[4])
  local state = redis.call('HMGET', keys[1], 'level', 'ts', 'upkeep')
  local upkeep_at = tonumber(state[3])
  local upkeep = false
  if #args > 4 then
    upkeep = upkeep_at == nil or now >= upkeep_at
    if upkeep then
      -- first seen at now - window or before: a score of at least its minus
      redis.call('ZREMRANGEBYSCORE', keys[2], window - now, '+inf')
    end
    for i = 5, #args, 2 do
      if redis.call('ZADD', keys[2], 'NX', '-' .. now_text, args[i]) == 0 then
        amount = amount - tonumber(args[i + 1])
      end
    end
    if upkeep then
      local period = math.ceil(window / 10)
      redis.call('PEXPIRE', keys[2], window + period)
      upkeep_at = now + period
    end
  end
  if amount <= 0 then return 0 end
  local level = level_at(state, cap, now - kept) - amount
  local level_text = string.format('%.17g', level)
  if upkeep then
    redis.call('HSET', keys[1], 'level', level_text, 'ts', now_text, 'upkeep', upkeep_at)
  else
    redis.call('HSET', keys[1], 'level', level_text, 'ts', now_text)
  end
  local life = refill_ms(cap, level)
  if upkeep_at then life = math.max(life, upkeep_at - now) end
  redis.call('PEXPIRE', keys[1], life)
  return amount
end

-- KEYS: credits; ARGV: micros. Takes them only if the balance covers them.
local function reserve(keys, args)
  local amount = tonumber(args[1])
  local balance = tonumber(redis.call('GET', keys[1]) or '0')
  if balance < amount then return 0 end
  redis.call('DECRBY', keys[1], amount)
  return 1
end

-- KEYS: credits, usage hash of the day, ledger stream
-- ARGV: balance delta (reserved - cost), model, prompt, completion, images, cost, entry (JSON)
-- The balance never goes below zero; the ledger keeps the true cost.
local function settle(keys, args)
  local balance = tonumber(redis.call('GET', keys[1]) or '0')
  local new = math.max(0, balance + tonumber(args[1]))
  redis.call('SET', keys[1], string.format('%d', new))
  local model = args[2]
  redis.call('HINCRBY', keys[2], model .. '|requests', 1)
  redis.call('HINCRBY', keys[2], model .. '|prompt_tokens', args[3])
  redis.call('HINCRBY', keys[2], model .. '|completion_tokens', args[4])
  redis.call('HINCRBY', keys[2], model .. '|images', args[5])
  redis.call('HINCRBY', keys[2], model .. '|cost_micros', args[6])
  redis.call('XADD', keys[3], '*', 'entry', args[7])
  return new
end

-- Webhooks (gateway/store/redis_webhooks.py). Every key below is one account's: its deliveries
-- (hash id -> JSON), their log (zset id -> created) and the pending ones (zset id -> next try).
local function add_delivery(keys, id, json, created, next_at, keep)
  if redis.call('HSETNX', keys[1], id, json) == 0 then return 0 end
  redis.call('ZADD', keys[2], created, id)
  redis.call('ZADD', keys[3], next_at, id)
  local excess = redis.call('ZCARD', keys[2]) - keep
  if excess > 0 then
    local old = redis.call('ZRANGE', keys[2], 0, excess - 1)
    for _, gone in ipairs(old) do
      redis.call('HDEL', keys[1], gone)
      redis.call('ZREM', keys[3], gone)
    end
    redis.call('ZREMRANGEBYRANK', keys[2], 0, excess - 1)
  end
  return 1
end

-- KEYS: deliveries, log, pending; ARGV: id, JSON, created, next attempt, deliveries kept
local function delivery_add(keys, args)
  return add_delivery(keys, args[1], args[2], args[3], args[4], tonumber(args[5]))
end

-- KEYS: deliveries, pending; ARGV: id, JSON, pending (1) or done (0), next attempt.
-- A delivery dropped from the log meanwhile stays dropped.
local function delivery_save(keys, args)
  if redis.call('HEXISTS', keys[1], args[1]) == 0 then return 0 end
  redis.call('HSET', keys[1], args[1], args[2])
  if args[3] == '1' then
    redis.call('ZADD', keys[2], args[4], args[1])
  else
    redis.call('ZREM', keys[2], args[1])
  end
  return 1
end

-- KEYS: webhook hash, deliveries, log, pending
-- ARGV: period, cursor, id, JSON, created, next attempt, deliveries kept
-- Stores the usage event only if the period is later than the last one reported: however many
-- schedulers race, a period is reported once, and the cursor moves with the event.
local function usage_event(keys, args)
  local last = tonumber(redis.call('HGET', keys[1], 'usage_period'))
  if last == nil or tonumber(args[1]) <= last then return 0 end
  redis.call('HSET', keys[1], 'usage_period', args[1], 'usage_cursor', args[2])
  return add_delivery({keys[2], keys[3], keys[4]}, args[3], args[4], args[5], args[6],
                      tonumber(args[7]))
end

-- KEYS: invoices hash, deliveries, log, pending
-- ARGV: invoice id, paid invoice JSON, delivery id ('' for none), JSON, created, next attempt,
--       deliveries kept
-- -> {1 changed | 0 already paid | -1 no such invoice, the invoice's JSON}
local function invoice_paid(keys, args)
  local current = redis.call('HGET', keys[1], args[1])
  if not current then return {-1, ''} end
  if cjson.decode(current)['status'] ~= 'open' then return {0, current} end
  redis.call('HSET', keys[1], args[1], args[2])
  if args[3] ~= '' then
    add_delivery({keys[2], keys[3], keys[4]}, args[3], args[4], args[5], args[6],
                 tonumber(args[7]))
  end
  return {1, args[2]}
end

-- KEYS: lease; ARGV: owner, ttl ms (0 releases). Takes (SET NX PX) or renews the lease;
-- 1 while `owner` holds it.
local function lease(keys, args)
  local holder = redis.call('GET', keys[1])
  local ttl = tonumber(args[2])
  if holder == args[1] then
    if ttl == 0 then
      redis.call('DEL', keys[1])
      return 0
    end
    redis.call('PEXPIRE', keys[1], ttl)
    return 1
  end
  if ttl > 0 and not holder then
    redis.call('SET', keys[1], args[1], 'NX', 'PX', ttl)
    return 1
  end
  return 0
end

redis.register_function('klawd_admit_v1', admit)
redis.register_function('klawd_charge_tokens_v1', charge_tokens)
redis.register_function('klawd_charge_tokens_v2', charge_tokens)
redis.register_function('klawd_charge_tokens_v3', charge_tokens_v3)
redis.register_function('klawd_charge_tokens_v4', charge_tokens_v4)
redis.register_function('klawd_reserve_v1', reserve)
-- How long a settled entry is recognised (a batch retried after a lost reply, a replay).
local MARKER_MS = 600000

-- v2: KEYS add a per-entry marker; an entry already settled (a batch retried after a lost
-- reply) is skipped, so settling is idempotent for ten minutes.
local function settle_once(keys, args)
  if not redis.call('SET', keys[4], '1', 'NX', 'PX', MARKER_MS) then return -1 end
  return settle(keys, args)
end

-- v3: v2, and the entry's API key: its usage of the day and its spend (settled cost in, the
-- reservation out) in the periods of the day it was admitted.
-- KEYS: credits, usage of the day, ledger, marker, key usage of the day, key spend of the day,
--       of the month, in total
-- ARGV: as v2, then key id, micros reserved against the key's budgets (0: none)
local function settle_v3(keys, args)
  local new = settle_once(keys, args)
  if new == -1 then return -1 end
  local key_id, cost, reserved = args[8], tonumber(args[6]), tonumber(args[9])
  redis.call('HINCRBY', keys[5], key_id .. '|requests', 1)
  redis.call('HINCRBY', keys[5], key_id .. '|prompt_tokens', args[3])
  redis.call('HINCRBY', keys[5], key_id .. '|completion_tokens', args[4])
  redis.call('HINCRBY', keys[5], key_id .. '|images', args[5])
  redis.call('HINCRBY', keys[5], key_id .. '|cost_micros', cost)
  for i = 1, 3 do
    local spend = keys[5 + i]
    -- the hash is new (or was empty) when the total is this entry's cost: give it its expiry
    if redis.call('HINCRBY', spend, 's', cost) == cost and SPEND_TTL_MS[i] > 0 then
      redis.call('PEXPIRE', spend, SPEND_TTL_MS[i])
    end
    -- (never HINCRBY by -0: Redis refuses "-0" as an integer)
    if reserved > 0 and redis.call('HINCRBY', spend, 'r', -reserved) < 0 then
      redis.call('HSET', spend, 'r', 0)
    end
  end
  return new
end

-- v4: v3, and the entry's cost counts against the account's current credit grant (fields of
-- the account's hash: grant_seq, grant (the balance right after it), grant_at, grant_spent).
-- KEYS: as v3, then the account's hash
-- -> -1 (settled before) or {balance, grant seq (0: none recorded), granted, granted at, spent}
local function settle_v4(keys, args)
  local new = settle_v3(keys, args)
  if new == -1 then return -1 end
  local grant = redis.call('HMGET', keys[9], 'grant_seq', 'grant', 'grant_at')
  if not grant[1] then return {new, 0, 0, 0, 0} end
  local spent = redis.call('HINCRBY', keys[9], 'grant_spent', args[6])
  return {new, tonumber(grant[1]), tonumber(grant[2]), tonumber(grant[3]), spent}
end

-- KEYS: the account's hash, its credits; ARGV: micros added (> 0), now (unix seconds)
-- Adds credits and makes the balance after them the account's new grant, counted from zero
-- spent. -> the new balance, or nil when there is no such account.
local function grant(keys, args)
  if redis.call('EXISTS', keys[1]) == 0 then return nil end
  local balance = redis.call('INCRBY', keys[2], args[1])
  redis.call('HSET', keys[1], 'grant', balance, 'grant_at', args[2], 'grant_spent', 0)
  redis.call('HINCRBY', keys[1], 'grant_seq', 1)
  return balance
end

-- v5: v4 for many entries of ONE account in one call (every key is the account's: one slot).
-- Each entry is applied once (its marker) and gets its own ledger record, as with v4; the
-- counters (usage and key usage of the day, key spend, the credit grant's spend) are summed over
-- the call's entries and written once per hash field, and the balance is read once, moved entry
-- by entry (never below zero after each, as v3 moves it) and written once. The keys and values
-- left are those of v4 entry by entry: replicas on v4 and v5 can share one Redis.
-- KEYS: credits, ledger, the account's hash, then per entry: usage of the day, marker, key usage
--       of the day, key spend of the day, of the month, in total (6 each)
-- ARGV: per entry, as v3: balance delta, model, prompt, completion, images, cost, entry (JSON),
--       key id, micros reserved against the key's budgets (9 each)
-- -> {entries applied (those not settled before), then as v4 after the last of them: grant seq
--     (0: none recorded, or nothing applied), granted, granted at, spent}
-- (`settle_entries` reads each entry's keys through `keys_of(i)`: the index in KEYS of its usage
-- of the day, its marker's name, the index of its key usage of the day and of the first of its
-- three key spends; its
-- arguments are ARGV[a + 1 ..] with a = first + stride * i, for i = 0 .. entries - 1.)
-- A request admitted under a lease is settled: its reservation (`micros`) leaves the lease's
-- hold, and the hold goes once it holds nothing (its lease given back, its requests settled).
-- False when the hold is gone already (expired and given back: nothing of it is held).
-- `lease_settled` finds the lease's state and `lease_take` moves it (settle_entries calls the
-- latter alone for an entry of the previous entry's lease). `leased` (lease id, and each hold
-- seen, -> {micros it holds, false once gone; its member; changed}) keeps a call's leases: each
-- is read once and written once (`leases_written`), as if entry by entry (a call's entries are
-- mostly one lease's: two commands an entry were HEXISTS and HINCRBY), and each hold is parsed
-- once (a hold without '|' is its lease's id: the same).
local function lease_take(lease, micros)
  if not lease[1] then return false end
  if micros > 0 then
    lease[1], lease[3] = lease[1] - micros, true
    if lease[1] <= 0 then lease[1] = false end
  end
  return true
end

local function lease_settled(holds, leased, order, hold, micros)
  local lease = leased[hold]
  if lease == nil then
    local id, member = lease_member(hold)
    lease = leased[id]
    if lease == nil then
      local leases = string.sub(holds, 1, -6) .. 'leases'
      lease = {tonumber(redis.call('HGET', leases, id)) or false, member, false}
      leased[id] = lease
      order[#order + 1] = id
    end
    leased[hold] = lease
  end
  return lease_take(lease, micros)
end

local function leases_written(holds, leased, order)
  if #order == 0 then return end
  local leases = string.sub(holds, 1, -6) .. 'leases'
  for _, id in ipairs(order) do
    local lease = leased[id]
    if lease[3] then
      if lease[1] then
        redis.call('HSET', leases, id, string.format('%d', lease[1]))
      else
        redis.call('HDEL', leases, id)
        redis.call('ZREM', holds, lease[2])
      end
    end
  end
end

local USAGE_FIELDS = {'|requests', '|prompt_tokens', '|completion_tokens', '|images',
                      '|cost_micros'}
-- v14's ledger: the field names of a stream entry's records, `e1`, `e2`, … (a call of more
-- entries than SETTLE_CHUNK makes the rest's names)
local LEDGER_FIELDS = {}
for n = 1, 100 do LEDGER_FIELDS[n] = 'e' .. n end

-- The fields of v14's and v15's stream entry of a call's records. `ledger` (settle_entries'):
-- the indices of the applied entries, in entry order, and `lines`; `records`: the call's ARGV.
-- v14: a field a record, `e1`, `e2`, …, each an argument of its own (records[i + 2]). v15: one
-- field, `records`, the records' lines as the worker sent them in one argument (records[2]) when
-- every entry is applied, else the applied entries' lines (a retried or replayed batch: rare).
local function ledger_fields(ledger, records, entries)
  if not ledger.lines then
    local fields = {}
    for n, i in ipairs(ledger) do
      fields[2 * n - 1], fields[2 * n] = LEDGER_FIELDS[n] or ('e' .. n), records[i + 2]
    end
    return fields
  end
  local text = records[2]
  if #ledger == entries then return {'records', text} end
  local picked, at, n = {}, 1, 1
  for i = 0, entries - 1 do
    local stop = string.find(text, '\n', at, true)
    if i == ledger[n] then picked[n], n = string.sub(text, at, stop), n + 1 end
    at = stop + 1
  end
  return {'records', table.concat(picked)}
end
-- `once(i)` (v10): whether entry i is settled for the first time; without it, its marker
-- (keys_of's second value) is set, unless it exists (ten minutes), as v2 to v9 do.
-- `records` (v11): the call's ARGV, where entry i's ledger record is records[i + 2] (else it is
-- the entry's seventh argument).
-- `names` (v13): an entry's model, key and hold are positions in `names` (its hold 0: none), each
-- name sent once a call; else they are the names themselves.
-- `ledger` (v14, v15): the applied entries' indices gather in it, in entry order, and their
-- records go into the ledger by one `XADD` after the loop (ledger_fields; its `written` then
-- true); else each entry's record is a stream entry of its own, by an `XADD` each.
local function settle_entries(keys, args, first, stride, entries, keys_of, holds, once, records,
                              names, ledger)
  local byte = string.byte  -- (a local: a global is a lookup in a table each use)
  local balance = tonumber(redis.call('GET', keys[1]) or '0')
  local moved = false
  -- hash key -> {name -> {requests, prompt, completion, images, cost}}, the keys in first-seen
  -- order: an entry adds to its name's five sums (no field name made per entry)
  local sums, sum_keys = {}, {}
  local function sum_of(key, name)
    local names = sums[key]
    if names == nil then
      names = {}
      sums[key] = names
      sum_keys[#sum_keys + 1] = key
    end
    local sum = names[name]
    if sum == nil then
      sum = {0, 0, 0, 0, 0}
      names[name] = sum
    end
    return sum
  end
  local spends, spend_keys = {}, {}  -- spend hash key -> {cost, reservation released, period}
  local function spend_of(spend, period)
    local state = spends[spend]
    if state == nil then
      state = {0, 0, period}
      spends[spend] = state
      spend_keys[#spend_keys + 1] = spend
    end
    return state
  end
  -- The sums and spends of the last entry's keys and names, looked up again only when an entry
  -- names others (a call's entries are mostly of one group and model; `usage`, an index in
  -- KEYS, stands for its entry's keys: keys_of derives them all from one place).
  local last_usage, last_model, last_key, model_sum, key_sum, day, month, total
  local leased, lease_order = {}, {}  -- (lease_settled)
  local last_hold, last_lease  -- the last lease's hold and state (leased[last_hold])
  local applied, spent = 0, 0
  for i = 0, entries - 1 do
    local a = first + stride * i
    local usage, marker, kusage, spend0 = keys_of(i)
    local new
    if once then
      new = once(i)
    else
      new = redis.call('SET', marker, '1', 'NX', 'PX', MARKER_MS)
    end
    if new then
      applied = applied + 1
      -- (`+ 0`: a number as it is, a decimal string of ARGV made one, without tonumber's call)
      local cost = args[a + 6] + 0
      local delta, reserved = args[a + 1] + 0, args[a + 9] + 0
      local hold = holds and args[a + 10]
      if names and hold then hold = names[hold] end
      if hold and hold ~= '' then
        local held
        if hold == last_hold then
          -- the previous entry's lease (a call's entries are mostly one lease's): found
          -- without lease_settled's lookup
          held = lease_take(last_lease, delta + cost)
        elseif byte(hold, 1) == LEASE then
          held = lease_settled(holds, leased, lease_order, hold, delta + cost)
          last_hold, last_lease = hold, leased[hold]
        else
          held = redis.call('ZREM', holds, hold) == 1
        end
        if not held then
          -- its hold expired and was given back: the reservation is back already, the cost only
          delta, reserved = -cost, 0
        end
      end
      balance = balance + delta  -- never below zero (math.max's call, without the call)
      if balance < 0 then balance = 0 end
      moved = true
      spent = spent + cost
      local prompt, completion, images = args[a + 3] + 0, args[a + 4] + 0, args[a + 5] + 0
      local model, key = args[a + 2], args[a + 8]
      if usage ~= last_usage or model ~= last_model or key ~= last_key then
        last_usage, last_model, last_key = usage, model, key
        model_sum, key_sum = sum_of(keys[usage], model), sum_of(keys[kusage], key)
        day, month = spend_of(keys[spend0], 1), spend_of(keys[spend0 + 1], 2)
        total = spend_of(keys[spend0 + 2], 3)
      end
      local m, k = model_sum, key_sum
      m[1], m[2], m[3], m[4], m[5] = m[1] + 1, m[2] + prompt, m[3] + completion, m[4] + images,
        m[5] + cost
      k[1], k[2], k[3], k[4], k[5] = k[1] + 1, k[2] + prompt, k[3] + completion, k[4] + images,
        k[5] + cost
      if ledger then
        ledger[#ledger + 1] = i
      else
        redis.call('XADD', keys[2], '*', 'entry', records and records[i + 2] or args[a + 7])
      end
      day[1], day[2] = day[1] + cost, day[2] + reserved
      month[1], month[2] = month[1] + cost, month[2] + reserved
      total[1], total[2] = total[1] + cost, total[2] + reserved
    end
  end
  if ledger and #ledger > 0 then
    redis.call('XADD', keys[2], '*', unpack(ledger_fields(ledger, records, entries)))
    ledger.written = true
  end
  if moved then redis.call('SET', keys[1], string.format('%d', balance)) end
  leases_written(holds, leased, lease_order)
  for _, key in ipairs(sum_keys) do
    for name, sum in pairs(sums[key]) do
      if names then name = names[name] end
      for f = 1, 5 do
        redis.call('HINCRBY', key, name .. USAGE_FIELDS[f], string.format('%d', sum[f]))
      end
    end
  end
  for _, spend in ipairs(spend_keys) do
    local cost, released, period = spends[spend][1], spends[spend][2], spends[spend][3]
    -- the hash is new (or was empty) when the total is the calls' cost: give it its expiry
    if redis.call('HINCRBY', spend, 's', string.format('%d', cost)) == cost
        and SPEND_TTL_MS[period] > 0 then
      redis.call('PEXPIRE', spend, SPEND_TTL_MS[period])
    end
    if released > 0 then
      -- stops at zero, as v3's HINCRBY and HSET per entry did (releases only subtract, so
      -- stopping once at the end is stopping after each)
      local r = tonumber(redis.call('HGET', spend, 'r')) or 0
      redis.call('HSET', spend, 'r', string.format('%d', math.max(0, r - released)))
    end
  end
  if applied == 0 then return {0, 0, 0, 0, 0} end
  local current = redis.call('HMGET', keys[3], 'grant_seq', 'grant', 'grant_at')
  if not current[1] then return {applied, 0, 0, 0, 0} end
  local total = redis.call('HINCRBY', keys[3], 'grant_spent', string.format('%d', spent))
  return {applied, tonumber(current[1]), tonumber(current[2]), tonumber(current[3]), total}
end

-- v5's and v6's KEYS: six per entry after the first `first` (usage, marker, key usage, spends)
local function six_each(keys, first)
  return function(i)
    local k = first + 6 * i
    return k + 1, keys[k + 2], k + 3, k + 4
  end
end

local function settle_v5(keys, args)
  return settle_entries(keys, args, 0, 9, #args / 9, six_each(keys, 3), nil)
end

-- v6: v5 for entries admitted by klawd_admit_v3: the account's expired holds are given back
-- first, then each entry's hold is removed, and an entry whose hold had expired and been given
-- back moves the balance by its cost alone (its reservation, of the credit and of the key's
-- spend, was given back then).
-- KEYS: credits, ledger, the account's hash, its holds, then per entry as v5
-- ARGV: per entry, as v5, then its hold (admit_v3's reply; '' for none: nothing reserved)
--       (10 each)
-- -> as v5, then how many expired holds it gave back
local function settle_v6(keys, args)
  local released = release_holds(keys[4], keys[1], now_ms())
  local reply = settle_entries(keys, args, 0, 10, #args / 10, six_each(keys, 4), keys[4])
  reply[6] = released
  return reply
end

-- v7: v6 with the keys a call's entries share named once. A batch's entries are mostly of one
-- day and one API key, so their usage, key usage and key spend keys are the same five: v6 sent
-- them with every entry (five of its six keys, about 330 bytes an entry). Each distinct day and
-- key is a group of five keys, named once; an entry names its group and its own marker.
-- KEYS: credits, ledger, the account's hash, its holds, then per group: usage of the day, key
--       usage of the day, key spend of the day, of the month, in total (5 each), then per
--       entry its marker
-- ARGV: the number of groups, then per entry: as v6 (10), then its group (1-based) (11 each)
-- -> as v6
local function settle_v7(keys, args)
  local groups = tonumber(args[1])
  local markers = 4 + 5 * groups
  local function keys_of(i)
    local g = 4 + 5 * (tonumber(args[12 + 11 * i]) - 1)
    return g + 1, keys[markers + i + 1], g + 2, g + 3
  end
  local released = release_holds(keys[4], keys[1], now_ms())
  local reply = settle_entries(keys, args, 1, 11, (#args - 1) / 11, keys_of, keys[4])
  reply[6] = released
  return reply
end

-- v9: v8 with its entries in one argument, a MessagePack array of twelve values an entry (v7's
-- eleven, then its marker's name), which the client packs in one C call where v8's eleven
-- arguments and marker key an entry cost it a formatted header each (decision 0010, issue
-- 19zr). The same markers as v8's: a batch settled by one is recognised by the other.
-- KEYS: credits, ledger, the account's hash, its holds, then per group as v7 (5 each)
-- ARGV: the entries (MessagePack)
-- -> as v7
local function settle_v9(keys, args)
  local flat = cmsgpack.unpack(args[1])
  local function keys_of(i)
    local a = 12 * i
    local g = 4 + 5 * (flat[a + 11] - 1)
    return g + 1, flat[a + 12], g + 2, g + 3
  end
  local released = release_holds(keys[4], keys[1], now_ms())
  local reply = settle_entries(keys, flat, 0, 12, #flat / 12, keys_of, keys[4])
  reply[6] = released
  return reply
end

-- The ids of a v10 to v13 call's entries (`stride` values an entry in `flat` from `first`: the
-- last but one its id, the last its second) settled before: in their second's set, or under
-- v8's and v9's marker key. -> id -> true
local function settled_before(prefix, flat, entries, first, stride)
  local by_second, seconds, legacy = {}, {}, {}
  for i = 0, entries - 1 do
    local a = first + stride * i + stride
    local id, second = flat[a - 1], flat[a]
    local ids = by_second[second]
    if ids == nil then
      ids = {}
      by_second[second] = ids
      seconds[#seconds + 1] = second
    end
    ids[#ids + 1] = id
    legacy[i + 1] = prefix .. id
  end
  local done = {}
  for _, second in ipairs(seconds) do
    local ids = by_second[second]
    local member = redis.call('SMISMEMBER', prefix .. 'w' .. second, unpack(ids))
    for j, id in ipairs(ids) do
      if member[j] == 1 then done[id] = true end
    end
  end
  if redis.call('EXISTS', unpack(legacy)) > 0 then
    for i, name in ipairs(legacy) do
      if redis.call('EXISTS', name) == 1 then done[flat[first + stride * i - 1]] = true end
    end
  end
  return done
end

-- v10: v9 with the markers of a call's entries checked a few commands a call and written by an
-- `SADD` an entry, not a `SET NX PX` (a key and its expiry) each: an entry's marker is its id
-- in a set of the account's ids settled with the same second of entry time
-- (`:settled:w<second>`, from the entry's own `ts`, so a retry or a replay of the entry finds
-- the same set), which lives ten minutes after the last id added to it; each set holds one
-- second of the account's entries, so its expiry frees little at once. An entry settled by v8
-- or v9 in the last ten minutes (its own marker key) is recognised too, by one `EXISTS` of the
-- call's names (v8 and v9 do not see v10's sets: a batch retried across releases is settled
-- once only from v9 to v10).
-- KEYS: as v9
-- ARGV: the entries (MessagePack), thirteen values an entry: v9's eleven, its id, its second
-- -> as v9
local function settle_v10(keys, args)
  local flat = cmsgpack.unpack(args[1])
  local entries = #flat / 13
  local prefix = keys[3] .. ':settled:'
  local done = settled_before(prefix, flat, entries, 0, 13)  -- and ids earlier in this call
  local renewed = {}  -- second -> true: its set's expiry renewed by this call
  -- An entry's id joins its set just before the entry's effects, as v9's `SET NX` came before
  -- them: a call that fails midway (Redis does not roll a function back) leaves at most that
  -- entry half-applied, never an applied entry without its marker for a retry to apply again.
  local function once(i)
    local id = flat[13 * i + 12]
    if done[id] then return false end
    done[id] = true
    local second = flat[13 * i + 13]
    local set = prefix .. 'w' .. second
    redis.call('SADD', set, id)
    if not renewed[second] then
      renewed[second] = true
      redis.call('PEXPIRE', set, MARKER_MS)
    end
    return true
  end
  local function keys_of(i)
    local g = 4 + 5 * (flat[13 * i + 11] - 1)
    return g + 1, nil, g + 2, g + 3
  end
  local released = release_holds(keys[4], keys[1], now_ms())
  local reply = settle_entries(keys, flat, 0, 13, entries, keys_of, keys[4], once)
  reply[6] = released
  return reply
end

-- (xpcall's handler: the error as it was raised, a command's error table whole)
local function as_raised(err) return err end

-- v11's call (as its comment below says); `repair`: v12's, which lets go of the markers of the
-- entries a failing call had not reached; `named`: v13's layout (its comment below), else v11's;
-- `folded`: v14's ledger ('fields') or v15's ('lines') (their comments below); `released`: how
-- many expired holds the caller gave back already (v17's), else this call gives them back
local function settle_marked(keys, args, repair, named, folded, released)
  local ledger
  if folded then
    -- a ledger of the wrong type fails the call here, before anything is written (v12's first
    -- entry's XADD failed after its hold was removed)
    redis.call('XLEN', keys[2])
    ledger = {lines = folded == 'lines'}
  end
  local flat = cmsgpack.unpack(args[1])
  local first, stride, group, names = 0, 13, 11, nil
  if named then first, stride, group, names = 1 + flat[1], 12, 7, flat end
  -- (v15's records are one argument: its entries are counted in the MessagePack)
  local entries = folded == 'lines' and (#flat - first) / stride or #args - 1
  local prefix = keys[3] .. ':settled:'
  local done = settled_before(prefix, flat, entries, first, stride)
  local new, fresh, seconds = {}, {}, {}  -- new: i -> true; fresh: second -> ids to mark
  for i = 0, entries - 1 do
    local a = first + stride * i + stride
    local id = flat[a - 1]
    if not done[id] then
      done[id], new[i] = true, true
      local second = flat[a]
      local ids = fresh[second]
      if ids == nil then
        ids = {}
        fresh[second] = ids
        seconds[#seconds + 1] = second
      end
      ids[#ids + 1] = id
    end
  end
  local marked, reached = false, -1
  local function once(i)
    if not marked then
      marked = true
      for _, second in ipairs(seconds) do
        local set = prefix .. 'w' .. second
        redis.call('SADD', set, unpack(fresh[second]))
        redis.call('PEXPIRE', set, MARKER_MS)
      end
    end
    reached = i
    return new[i] == true
  end
  local function keys_of(i)
    local g = 4 + 5 * (flat[first + stride * i + group] - 1)
    return g + 1, nil, g + 2, g + 3
  end
  released = released or release_holds(keys[4], keys[1], now_ms())
  if not repair then
    local reply = settle_entries(keys, flat, first, stride, entries, keys_of, keys[4], once, args,
                                 names)
    reply[6] = released
    return reply
  end
  -- (xpcall, not pcall: Redis's pcall gives a command's error as its text, which raised again
  -- replies `ERR` and a second position before it instead of the command's own code)
  local ok, reply = xpcall(function()
    return settle_entries(keys, flat, first, stride, entries, keys_of, keys[4], once, args, names,
                          ledger)
  end, as_raised)
  if not ok then
    -- Failed on entry `reached` (or after the loop: the last). The entries after it are marked
    -- and untouched: unmarked, a retry applies them. (Nothing is rolled back: the failing
    -- entry, maybe half-applied, stays marked, as in v10.) v14: the records of the entries
    -- before it go into the ledger now, as v12's XADD an entry had put them.
    if ledger and not ledger.written and #ledger > 0 then
      redis.call('XADD', keys[2], '*', unpack(ledger_fields(ledger, args, entries)))
    end
    for i = reached + 1, entries - 1 do
      local a = first + stride * i + stride
      if new[i] then redis.call('SREM', prefix .. 'w' .. flat[a], flat[a - 1]) end
    end
    error(reply, 0)  -- as it was raised (level 0: no position added)
  end
  reply[6] = released
  return reply
end

-- v11: v10 with each entry's ledger record an argument of its own, and a call's markers written
-- by one `SADD` per second of entry time. v10 read each record into Lua twice (inside the
-- MessagePack argument, then as the string cmsgpack makes of it; Lua pays every string it
-- makes by its length) and sent one `SADD` an entry (each `redis.call` ~1.3 µs of the Lua
-- around it). The ids of the call's entries settled for the first time join their sets all
-- together, just before the first entry's effects (where v10's first `SADD` went): a call
-- that fails midway still leaves every entry it applied, even partly, marked, so a retry
-- applies nothing twice (entries after the failing one are marked too and not applied: lost
-- rather than doubled, as the half-applied entry is in v10). The same sets as v10's: a batch
-- settled by one is recognised by the other.
-- KEYS: as v10
-- ARGV: the entries (MessagePack; thirteen values an entry as v10's, the seventh, the record,
--       0), then each entry's ledger record
-- -> as v10
local function settle_v11(keys, args)
  return settle_marked(keys, args, false)
end

-- v12: v11, and a call that fails midway (a key of the wrong type: Redis rolls nothing back)
-- removes the markers of the entries after the failing one, which it had marked and not
-- applied: a retry applies them, as v10's did, instead of losing them. One `pcall` a call; per
-- entry an upvalue's store (the entry reached).
-- KEYS, ARGV, reply: as v11
local function settle_v12(keys, args)
  return settle_marked(keys, args, true)
end

-- v13: v12 with each name a call's entries share sent once a call. A call's entries are mostly
-- of one model, one API key and one lease, and v12 sent those three names with every entry:
-- three strings an entry that Redis's Lua makes (and hashes byte by byte) from the MessagePack
-- (decision 0010, twenty-second pass). The keys, values, expiries and markers left are v12's:
-- a batch settled by one is recognised by the other.
-- KEYS: as v12
-- ARGV: the entries (MessagePack): the number of names n, the call's distinct names (models,
--       API keys, holds), then twelve values an entry: v12's first six (its model the position
--       of its name in this array), its group, its key (a position), its key reservation, its
--       hold (a position; 0: none), its id, its second; then each entry's ledger record
-- -> as v12
local function settle_v13(keys, args)
  return settle_marked(keys, args, true, true)
end

-- v14: v13 with the call's ledger records in one stream entry, by one `XADD` a call: v13's
-- `XADD` an entry was the biggest part of an entry's work in Redis (decision 0010, twenty-fifth
-- pass). The stream entry's fields are `e1`, `e2`, … (no `entry`), one record each, in entry
-- order: readers take every field of a stream entry as a record (gateway/store/redis_webhooks.py),
-- and a reader of a release before v14 fails on such an entry rather than count one record of
-- it (its usage event then waits for the next period). Every other key, value, expiry and
-- marker is v13's: a batch settled by one is recognised by the other. A call failing midway
-- keeps what v13 keeps (the records of the entries before the failing one); a ledger of the
-- wrong type fails it before anything is written.
-- KEYS, ARGV, reply: as v13
local function settle_v14(keys, args)
  return settle_marked(keys, args, true, true, 'fields')
end

-- v15: v14 with the call's ledger records sent as one argument, their lines (each record's JSON
-- and '\n', in entry order), stored as they came in one field, `records`, of the call's stream
-- entry. v14's records, an argument each, were ~430 bytes an entry that Redis makes a Lua string
-- of (hashing every byte) and then a field of the stream entry of its own (decision 0010,
-- twenty-sixth pass); one argument is one string a call. Readers take each line of a field as a
-- record (gateway/store/redis_webhooks.py); a reader of a release before v15 fails on a field of
-- two lines or more rather than count one record of it (its usage event then waits for the next
-- period). Every other key, value, expiry and marker is v14's: a batch settled by one is
-- recognised by the other; a call failing midway keeps the lines of the entries before the
-- failing one, as v14 keeps their records.
-- KEYS: as v14
-- ARGV: the entries (MessagePack, as v14's), then the entries' records' lines, one argument
-- -> as v14
local function settle_v15(keys, args)
  return settle_marked(keys, args, true, true, 'lines')
end

-- v2 of delivery_add, usage_event and invoice_paid: KEYS end with the call's own marker (a
-- nonce the caller draws for the call), set for MARKER_MS when the call stores something.
-- redis-py sends a call again when its reply timed out although the call ran (the Redis
-- Cluster's client, across a stop of the process longer than its read timeout): the retry finds
-- its marker and answers as the first try did, not "the id exists" / "the period was reported",
-- which left the stored delivery out of the due index (docs/decisions/0006, issue 19zzzzzj).
local function call_marked(marker, changed)
  if changed == 1 then redis.call('SET', marker, '1', 'PX', MARKER_MS) end
  return changed
end

-- KEYS: as v1, then the call's marker; ARGV: as v1
local function delivery_add_v2(keys, args)
  if redis.call('EXISTS', keys[4]) == 1 then return 1 end
  return call_marked(keys[4], delivery_add(keys, args))
end

-- KEYS: as v1, then the call's marker; ARGV: as v1
local function usage_event_v2(keys, args)
  if redis.call('EXISTS', keys[5]) == 1 then return 1 end
  return call_marked(keys[5], usage_event(keys, args))
end

-- KEYS: as v1, then the call's marker; ARGV: as v1 -> as v1 ({1, the paid invoice} again)
local function invoice_paid_v2(keys, args)
  if redis.call('EXISTS', keys[5]) == 1 then
    return {1, redis.call('HGET', keys[1], args[1])}
  end
  local reply = invoice_paid(keys, args)
  call_marked(keys[5], reply[1])
  return reply
end

-- Issue 19zzzzzl (docs/decisions/0005, thirty-fourth pass): the writes redis-py's clients send
-- again after a read that timed out are answered as their first try was, taking nothing twice.
-- (The lean client of a single Redis sends nothing twice: it keeps admit v3, reserve v1, grant
-- v1; a first settle is v15 on both.)

-- v4 of admit: v3, and its retry answers as its first try did: every call that takes a request
-- records a hold, its id drawn per call (a call reserving nothing too: "id|0", which its settle
-- removes and whose expiry gives back nothing), and a call that finds its own hold is its retry
-- (no new key). The retry's figures are the limits as they stand, after the first try's take.
-- KEYS, ARGV: as v3 (the hold's id sent whenever the call consumes) -> as v3
local function admit_v4(keys, args)
  local now = now_ms()
  local n, m = #keys, #args
  local id, reserve = args[m - 1], tonumber(args[4])
  if args[5] ~= '1' or id == '' then return admit_v3_at(keys, args, now) end
  local with_key, hold = n >= 10, id .. '|0'
  if reserve > 0 then hold = hold_member(keys, args, with_key, reserve) end
  if not redis.call('ZSCORE', keys[n], hold) then
    local reply = admit_v3_at(keys, args, now)
    if reply[1] == 0 and reserve == 0 then
      redis.call('ZADD', keys[n], now + tonumber(args[m]), hold)
      reply[10] = hold
    end
    return reply
  end
  args[5] = '0'  -- the figures now, taking nothing: the first try took the request
  local reply = admit_core(keys, args, with_key, now)
  reply[1], reply[2], reply[9], reply[10], reply[11] = 0, 0, 0, hold, 0
  return reply
end

-- v2 of reserve: KEYS: credits, the call's marker (its nonce); ARGV: micros. -> as v1, once.
local function reserve_v2(keys, args)
  if redis.call('EXISTS', keys[2]) == 1 then return 1 end
  return call_marked(keys[2], reserve(keys, args))
end

-- v2 of grant: KEYS as v1, then the call's marker (its nonce); a call that finds it answers the
-- balance as it stands: its first try added the credits and made the grant. -> as v1, once.
local function grant_v2(keys, args)
  if redis.call('EXISTS', keys[3]) == 1 then return tonumber(redis.call('GET', keys[2])) end
  local balance = grant(keys, args)
  if balance then redis.call('SET', keys[3], '1', 'PX', MARKER_MS) end
  return balance
end

-- v16 of settle: v15 for a batch sent again after its reply was lost (the usage recorder's
-- retry of a batch that failed: redis-py's pipeline does not resend a call whose read timed
-- out, nor does the lean client), whose entries the first try may have settled: a call that
-- applies none answers the account's grant as it stands (v15: none), the grant its first try
-- reported or one later, so the credit's thresholds crossed by it are announced. The first try
-- of a batch is v15's.
-- KEYS, ARGV, reply: as v15
local function settle_v16(keys, args)
  local reply = settle_v15(keys, args)
  if reply[1] == 0 then
    local grant = redis.call('HMGET', keys[3], 'grant_seq', 'grant', 'grant_at', 'grant_spent')
    if grant[1] then
      for i = 1, 4 do reply[i + 1] = tonumber(grant[i]) or 0 end
    end
  end
  return reply
end

-- v17 of settle: v15 for a batch's first try, its effects applied as sums when it can be. v15
-- runs ~33 K redis-server instructions an entry, most of them its Lua's per-entry work
-- (unpacking twelve values, three loops over the entries: decision 0010, thirtieth pass). A
-- batch of entries none of which was settled before, whose holds are all held (leases that hold
-- their entries to the last, an exact admission's hold of its one entry) and whose balance goes
-- below zero after none of them, leaves the same keys when its sums are applied at once: the
-- worker sends them beside v15's arguments, and only the ids' markers are handled an entry.
-- Any other batch (an id settled before, a hold given back, a lease used up before its last
-- entry, a hold of two entries, a balance that would stop at zero) is settled by v15's
-- per-entry path. Every key, value, expiry and marker is v15's: a batch settled by one is
-- recognised by the other.
-- KEYS: as v15
-- ARGV: as v15, then the sums (MessagePack; '' for none: v15's path), an array of
--   low: the lowest running sum of the entries' balance deltas, in entry order (<= 0),
--   delta: their sum, spent: the sum of their costs,
--   seconds: {{second, {ids}}, ...}: the entries' ids by the second of their time,
--   usage: {{KEYS index, name, requests, prompt, completion, images, cost}, ...}: per usage
--     (by model) and key usage (by API key) hash and name,
--   spends: {{KEYS index, period (1 day, 2 month, 3 total), cost, key reservation}, ...},
--   holds: {{hold, micros, micros before its last entry, entries}, ...}: per hold named
-- -> as v15
local function settle_sums(keys, args, sums, released)
  local low, delta, spent, seconds, usage, spends, holds = unpack(sums)
  -- (a batch v15 would fail on, it fails the same way: its balance not a number, its leases'
  -- hash of another type)
  local balance = tonumber(redis.call('GET', keys[1]) or '0')
  if not balance or balance + low < 0 then return nil end
  local leases_key = string.sub(keys[4], 1, -6) .. 'leases'
  local leases, ids, members, seen, plain = {}, {}, {}, {}, {}
  for _, hold in ipairs(holds) do
    if string.byte(hold[1], 1) == LEASE then
      local id, member = lease_member(hold[1])
      if seen[id] then return nil end  -- two names of one lease: in entry order, v15's path
      seen[id] = true
      leases[#leases + 1], ids[#ids + 1], members[#members + 1] = hold, id, member
    elseif hold[4] > 1 then
      return nil  -- its second entry finds it removed: not held
    else
      plain[#plain + 1] = hold[1]
    end
  end
  local held = #ids > 0 and redis.pcall('HMGET', leases_key, unpack(ids)) or {}
  if held.err then return nil end
  for n, lease in ipairs(leases) do
    local micros = tonumber(held[n])
    -- gone, or used up before its last entry: an entry after that is not held
    if not micros or lease[3] >= micros then return nil end
    held[n] = micros
  end
  if #plain > 0 then
    local scores = redis.pcall('ZMSCORE', keys[4], unpack(plain))
    if scores.err then return nil end
    for n = 1, #plain do
      if not scores[n] then return nil end  -- given back (expired): its cost only
    end
  end
  local prefix = keys[3] .. ':settled:'
  for _, second in ipairs(seconds) do
    local set = prefix .. 'w' .. second[1]
    redis.call('SADD', set, unpack(second[2]))
    redis.call('PEXPIRE', set, MARKER_MS)
  end
  if #plain > 0 then redis.call('ZREM', keys[4], unpack(plain)) end
  redis.call('XADD', keys[2], '*', 'records', args[2])
  redis.call('SET', keys[1], string.format('%d', balance + delta))
  for n, lease in ipairs(leases) do
    if lease[2] > 0 then
      local left = held[n] - lease[2]
      if left > 0 then
        redis.call('HSET', leases_key, ids[n], string.format('%d', left))
      else
        redis.call('HDEL', leases_key, ids[n])
        redis.call('ZREM', keys[4], members[n])
      end
    end
  end
  for _, sum in ipairs(usage) do
    local key, name = keys[sum[1]], sum[2]
    for f = 1, 5 do
      redis.call('HINCRBY', key, name .. USAGE_FIELDS[f], string.format('%d', sum[f + 2]))
    end
  end
  for _, sum in ipairs(spends) do
    local spend, period, cost, reserved = keys[sum[1]], sum[2], sum[3], sum[4]
    if redis.call('HINCRBY', spend, 's', string.format('%d', cost)) == cost
        and SPEND_TTL_MS[period] > 0 then
      redis.call('PEXPIRE', spend, SPEND_TTL_MS[period])
    end
    if reserved > 0 then
      local r = tonumber(redis.call('HGET', spend, 'r')) or 0
      redis.call('HSET', spend, 'r', string.format('%d', math.max(0, r - reserved)))
    end
  end
  local applied = 0
  for _, second in ipairs(seconds) do applied = applied + #second[2] end
  local reply = {applied, 0, 0, 0, 0, released}
  local current = redis.call('HMGET', keys[3], 'grant_seq', 'grant', 'grant_at')
  if current[1] then
    reply[2], reply[3], reply[4] = tonumber(current[1]), tonumber(current[2]),
      tonumber(current[3])
    reply[5] = redis.call('HINCRBY', keys[3], 'grant_spent', string.format('%d', spent))
  end
  return reply
end

local function settle_v17(keys, args)
  if args[3] == '' then return settle_v15(keys, args) end
  -- v15's order: the ledger's type, the markers read, the expired holds given back
  redis.call('XLEN', keys[2])
  local sums = cmsgpack.unpack(args[3])
  local prefix, legacy = keys[3] .. ':settled:', {}
  for _, second in ipairs(sums[4]) do
    local found = redis.call('SMISMEMBER', prefix .. 'w' .. second[1], unpack(second[2]))
    for _, member in ipairs(found) do
      if member == 1 then return settle_v15(keys, args) end
    end
    for _, id in ipairs(second[2]) do legacy[#legacy + 1] = prefix .. id end
  end
  if redis.call('EXISTS', unpack(legacy)) > 0 then return settle_v15(keys, args) end
  local released = release_holds(keys[4], keys[1], now_ms())
  return settle_sums(keys, args, sums, released)
    or settle_marked(keys, args, true, true, 'lines', released)
end

redis.register_function('klawd_settle_v1', settle)
redis.register_function('klawd_settle_v2', settle_once)
redis.register_function('klawd_settle_v3', settle_v3)
redis.register_function('klawd_settle_v4', settle_v4)
redis.register_function('klawd_grant_v1', grant)
redis.register_function('klawd_settle_v5', settle_v5)
redis.register_function('klawd_settle_v6', settle_v6)
redis.register_function('klawd_settle_v7', settle_v7)
-- v8: v7, and an entry admitted under a lease (its hold's id starting with "L", admit_lease_v1)
-- takes its reservation out of the lease's hold. (v7 runs the same code: a replica that calls
-- v8 fails at once on a Redis that still has the library before leases, and loads it again.)
redis.register_function('klawd_settle_v8', settle_v7)
redis.register_function('klawd_settle_v9', settle_v9)
redis.register_function('klawd_settle_v10', settle_v10)
redis.register_function('klawd_settle_v11', settle_v11)
redis.register_function('klawd_settle_v12', settle_v12)
redis.register_function('klawd_settle_v13', settle_v13)
redis.register_function('klawd_settle_v14', settle_v14)
redis.register_function('klawd_settle_v15', settle_v15)
redis.register_function('klawd_settle_v16', settle_v16)
redis.register_function('klawd_settle_v17', settle_v17)
redis.register_function('klawd_admit_v2', admit_v2)
redis.register_function('klawd_admit_v3', admit_v3)
redis.register_function('klawd_admit_v4', admit_v4)
redis.register_function('klawd_reserve_v2', reserve_v2)
redis.register_function('klawd_grant_v2', grant_v2)
redis.register_function('klawd_admit_lease_v1', admit_lease)
redis.register_function('klawd_lease_return_v1', lease_return)
redis.register_function('klawd_account_v1', account_v1)
redis.register_function('klawd_delivery_add_v1', delivery_add)
redis.register_function('klawd_delivery_save_v1', delivery_save)
redis.register_function('klawd_usage_event_v1', usage_event)
redis.register_function('klawd_invoice_paid_v1', invoice_paid)
redis.register_function('klawd_delivery_add_v2', delivery_add_v2)
redis.register_function('klawd_usage_event_v2', usage_event_v2)
redis.register_function('klawd_invoice_paid_v2', invoice_paid_v2)
redis.register_function('klawd_lease_v1', lease)

#!lua name=dispatch_v3
--[[
Dispatcher Redis Function library, version 3 (library `dispatch_v3`; every function name starts
with `dispatch_v3_` so pods of two releases can share one Redis during a rolling upgrade). Version 3
changed the doorbell: a match's bell carries the offer (see `notify_offer`).

Theory of operation. Redis is the single source of truth. Every change that touches more than one
key is one function here, so it is atomic. A job is matched to a runner inside these functions
(at submit, at ready, when a job is re-queued); the pod that holds the chosen runner's WebSocket is
told by adding the runner to the pod's inbox SET and publishing on the pod's bell channel
(SPUBLISH: sharded pub/sub, which every server with Functions has, Redis >= 7.0 and Valkey; on a
cluster the channel lives in the namespace's slot, so the message reaches only the shard's nodes).
A match's bell carries what the pod needs to send the `job` at once (runner, connection
generation, job, attempt and, up to BELL_INLINE_MAX bytes of payload, the offer itself); every
other bell is the runner name alone and the pod reads the rest with `observe`. The message is only
a hint: pods re-read their inbox on every (re)subscribe and on a reconcile tick, so a lost message
costs latency, never a job.

Calling convention: `FCALL name numkeys key... arg...` with the namespace as ARGV[1]. The caller
declares as KEYS every key the call touches that can be named from its arguments (each function's
header lists them under "Keys:"; `dispatcher/functions.py` builds them), so a cluster client
routes the call and Redis Cluster checks the node serves them. The functions themselves never read
KEYS: every key name is built below from the namespace exactly as `dispatcher/keys.py` builds it (a
test pins the two together), so numkeys 0 keeps working on a standalone Redis (producers in other
languages). Keys found at run time (jobs of a queue, runners of an idle set, sinks) are undeclared:
with a hash-tagged namespace ('{name}') every key and channel of the namespace shares one hash
slot, and Redis Cluster (checked on 7.0) lets a function touch undeclared keys of the slot it runs
for; a key of another slot is an error there. Times are the Redis server's clock in milliseconds (the server never trusts a runner's
clock, and pods share one clock this way). Replies are JSON texts unless said otherwise.

Job status: pending -> claimed -> running -> completed -> processed, or failed / canceled.
Final statuses: completed, processed, failed, canceled (completed only waits for a result writer).
A `failed` from the runner with retries left is not final: the job goes back to pending (at once,
or after its retry_delay through the delayed set) as a new attempt; see `retry_job`.
]]

-- ---------------------------------------------------------------------------------------------
-- key names (mirror of dispatcher/keys.py)
-- ---------------------------------------------------------------------------------------------
-- Up to four parts after the namespace, joined with ':' by one concatenation (no table: these
-- run several times per call, and a table plus table.concat cost a few times more).
local function key(ns, a, b, c, d)
  if d then return ns .. ':' .. a .. ':' .. b .. ':' .. c .. ':' .. d end
  if c then return ns .. ':' .. a .. ':' .. b .. ':' .. c end
  if b then return ns .. ':' .. a .. ':' .. b end
  return ns .. ':' .. a
end
local function job_key(ns, id) return key(ns, 'job', id) end
local function runner_key(ns, name) return key(ns, 'runner', name) end
local function pending_key(ns, spec) return key(ns, 'pending', spec) end
local function idle_key(ns, spec) return key(ns, 'idle', spec) end
local function leases_key(ns) return key(ns, 'leases') end
local function pods_key(ns) return key(ns, 'pods') end
local function pod_runners_key(ns, pod) return key(ns, 'pod', pod, 'runners') end
local function pod_inbox_key(ns, pod) return key(ns, 'pod', pod, 'inbox') end
local function reaping_key(ns) return key(ns, 'pods', 'reaping') end
local function pod_channel(ns, pod) return key(ns, 'pod', pod, 'bell') end
local function done_channel(ns) return key(ns, 'done') end
local function outbox_key(ns) return key(ns, 'outbox') end
local function sinkbox_key(ns, sink) return key(ns, 'sinkbox', sink) end
local function sinks_key(ns) return key(ns, 'sinks') end
local function log_key(ns, id) return key(ns, 'log', id) end
local function delayed_key(ns) return key(ns, 'delayed') end
local function usage_key(ns, day) return key(ns, 'usage', day) end
local function usage_total_key(ns) return key(ns, 'usage', 'total') end
-- rq keeps a queue named Q in the list 'rq:queue:Q' (mirror of Keys.rq_queue)
local function results_rq_queue(ns) return 'rq:queue:' .. ns .. ':results' end
local function sink_rq_queue(ns, sink) return 'rq:queue:' .. ns .. ':sink:' .. sink end

local EVENTS_MAXLEN = '10000'
local MAX_LOST_STARTS = 5
local MAX_PAYLOAD_BYTES = 1048576
local MAX_TIMEOUT_S = 30 * 24 * 3600
local SPEC_PATTERN = '^[%w%._/@%+%-]+$'
local NAME_PATTERN = '^[%w%._@%+%-]+$'  -- a runner name is one URL path segment: no '/'
local UUID_PATTERN = '^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$'
local FINAL = {completed = true, processed = true, failed = true, canceled = true}
local IN_FLIGHT = {claimed = true, running = true}

-- ---------------------------------------------------------------------------------------------
-- small helpers
-- ---------------------------------------------------------------------------------------------
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fail(msg) return redis.error_reply('ERR ' .. msg) end

-- The decimal text of a whole number (ms timestamps, deadlines, counters): what tostring gives
-- below 1e14, but tostring formats with '%.14g', which costs several times more (a lifecycle
-- formats a dozen timestamps). Any other value: tostring.
local function as_text(v)
  if type(v) == 'number' and v % 1 == 0 and v > -1e14 and v < 1e14 then
    return string.format('%d', v)
  end
  return tostring(v)
end

-- The control fields of a job (never the payload or outputs, which may be large).
local JOB_FIELDS = {'id', 'spec', 'status', 'attempt', 'runner', 'priority', 'timeout',
                    'max_attempts', 'runs', 'lost_starts', 'qmember', 'start_deadline',
                    'lease_deadline', 'started', 'failed_by', 'cancel_reason', 'group'}

-- What the hot paths read instead (each field an HMGET looks up costs a scan of the record):
-- `running`/`heartbeat` fence, renew the lease and see whether a deadline passed (reap_job then
-- reads the whole record); a terminal result fences and finalizes.
local START_FIELDS = {'status', 'runner', 'attempt', 'cancel_reason', 'runs', 'started', 'timeout',
                      'lease_deadline', 'start_deadline'}
local FINISH_FIELDS = {'status', 'runner', 'attempt', 'failed_by', 'group', 'spec', 'qmember'}

-- `fields`: which control fields (default: all of JOB_FIELDS); the others are nil in the table.
local function load_job(ns, id, fields)
  fields = fields or JOB_FIELDS
  local values = redis.call('HMGET', job_key(ns, id), unpack(fields))
  local j = {}
  for i, name in ipairs(fields) do j[name] = values[i] or nil end
  return j
end

-- HSET the pairs of `set` whose value is a string; HDEL those whose value is false.
local function write_fields(k, set)
  local hset, hdel = {'HSET', k}, {'HDEL', k}
  for name, value in pairs(set) do
    if value == false then
      table.insert(hdel, name)
    else
      table.insert(hset, name)
      table.insert(hset, as_text(value))
    end
  end
  if #hset > 2 then redis.call(unpack(hset)) end
  if #hdel > 2 then redis.call(unpack(hdel)) end
end

-- Timeouts in ms, from the namespace's config hash (written by pods), with the documented defaults.
local function config(ns)
  local v = redis.call('HMGET', key(ns, 'config'), 'start_timeout', 'lease_timeout', 'timeout_grace')
  return {
    start = math.floor((tonumber(v[1]) or 15) * 1000),
    lease = math.floor((tonumber(v[2]) or 30) * 1000),
    grace = math.floor((tonumber(v[3]) or 60) * 1000),
  }
end

local function emit(ns, now, event, job, fields)
  local args = {'XADD', key(ns, 'events'), 'MAXLEN', '~', EVENTS_MAXLEN, '*',
                'event', event, 'job', job or '', 'ts', as_text(now)}
  for name, value in pairs(fields or {}) do
    table.insert(args, name)
    table.insert(args, as_text(value))
  end
  redis.call(unpack(args))
end

local function count(ns, name) redis.call('HINCRBY', key(ns, 'stats'), name, 1) end

local function pod_alive(ns, pod, now)
  if not pod or pod == '' then return false end
  local deadline = tonumber(redis.call('ZSCORE', pods_key(ns), pod))
  return deadline ~= nil and deadline > now
end

local function runner_specs(ns, name)
  local raw = redis.call('HGET', runner_key(ns, name), 'specs')
  if not raw then return {} end
  return cjson.decode(raw)
end

-- Ring the doorbell of the pod holding `runner`: inbox first (durable), then the hint.
local function notify(ns, pod, runner)
  if not pod or pod == '' then return end
  redis.call('SADD', pod_inbox_key(ns, pod), runner)
  redis.call('SPUBLISH', pod_channel(ns, pod), runner)
end

-- Largest payload (bytes) a match's bell carries inline. A larger one is left out (the pod reads
-- the offer with `observe`): a burst of big bells would fill the subscriber's output buffer
-- (`client-output-buffer-limit pubsub`, 8 MB soft by default) and get it disconnected.
local BELL_INLINE_MAX = 8192

-- Ring the pod holding `runner` for a match: inbox first (durable), then a bell that carries the
-- offer, so the pod sends the `job` without another call. Format (space-separated head; no field
-- can hold a space or a newline: runner names, specs and UUIDs exclude both):
--   '<runner> <conn> <job> <attempt> <spec> <timeout> <created>' [ '\n' <payload JSON> ]
-- The payload part is absent when it is over BELL_INLINE_MAX. `conn` is the connection
-- generation the runner was idle on: a pod never sends the job on another one.
local function notify_offer(ns, pod, runner, conn, offer)
  redis.call('SADD', pod_inbox_key(ns, pod), runner)
  local bell = table.concat({runner, conn, offer.job, as_text(offer.attempt), offer.spec,
                             as_text(offer.timeout), as_text(offer.created)}, ' ')
  if #offer.payload <= BELL_INLINE_MAX then bell = bell .. '\n' .. offer.payload end
  redis.call('SPUBLISH', pod_channel(ns, pod), bell)
end

-- Take a runner out of every idle set (it is no longer waiting in a long poll). `specs`: its
-- specs when the caller has them read already (else read here).
local function unidle(ns, name, specs)
  for _, spec in ipairs(specs or runner_specs(ns, name)) do
    redis.call('ZREM', idle_key(ns, spec), name)
  end
  redis.call('HSET', runner_key(ns, name), 'polling', '0')
end

-- The runner no longer holds a job: idle if connected, offline otherwise.
local function free_runner(ns, name, job_id, now)
  local rk = runner_key(ns, name)
  local r = redis.call('HMGET', rk, 'job', 'pod', 'ephemeral')
  local seen = {r[3], r[2]}  -- what retire_if_ephemeral reads (unchanged here)
  if r[1] ~= job_id then return nil, seen end
  local pod = r[2]
  local state = (pod and pod ~= '') and 'idle' or 'offline'
  redis.call('HSET', rk, 'job', '', 'attempt', '', 'state', state, 'idle_since', as_text(now))
  return pod, seen
end

-- The lease deadline that matters next for an in-flight job.
-- When a running job is past its `timeout` + grace (ms).
local function hard_deadline(job, cfg)
  return tonumber(job.started) + math.floor(tonumber(job.timeout) * 1000) + cfg.grace
end

local function next_deadline(job, cfg)
  if job.status == 'claimed' then return tonumber(job.start_deadline) end
  return math.min(tonumber(job.lease_deadline), hard_deadline(job, cfg))
end

local function publish_done(ns, id) redis.call('SPUBLISH', done_channel(ns), id) end

-- ---------------------------------------------------------------------------------------------
-- matching
-- ---------------------------------------------------------------------------------------------

-- ---------------------------------------------------------------------------------------------
-- concurrency groups (matching side)
-- ---------------------------------------------------------------------------------------------
--[[
A job may name a group; at most the group's limit of its jobs are claimed or running at once.
Per group g: group:<g> HASH (`limit`; absent = the namespace default, config
`group_default_limit`, else unlimited), group:<g>:inflight SET (its claimed and running jobs),
group:<g>:pending:<spec> ZSET (its pending jobs of one spec, scored and named as in
pending:<spec>), group:<g>:specs SET (specs it has pending jobs of), group:<g>:heads HASH (spec ->
the member of pending:<spec> that stands for the group); `groups` SET names every group.
A group job waits in its group's queue. While the group has room, the head of each of its queues
also sits in its spec's pending set, so matching (`best_pending`: ZRANGE 0 0 per spec) sees the
best job of every group with room and never a job of a saturated group: bounded work per match,
whatever the number of groups. When the group fills up its heads leave the pending sets (one ZREM
per spec it waits on); when room comes back (a job ends or is re-queued, the limit is raised)
they return and idle runners get them in the same call (`group_fill`).
]]
local function groups_key(ns) return key(ns, 'groups') end
local function group_key(ns, g) return key(ns, 'group', g) end
local function group_inflight_key(ns, g) return key(ns, 'group', g, 'inflight') end
local function group_pending_key(ns, g, spec) return key(ns, 'group', g, 'pending', spec) end
local function group_specs_key(ns, g) return key(ns, 'group', g, 'specs') end
local function group_heads_key(ns, g) return key(ns, 'group', g, 'heads') end

local MAX_GROUP_LIMIT = 1000000
-- Most jobs one call hands to idle runners when a group gets room (a limit raised by thousands):
-- the rest go out with the next `ready`s and group events.
local MAX_GROUP_FILL = 1000

-- The group's limit: its own, else the namespace default, else nil (unlimited).
local function group_limit(ns, g)
  local own = redis.call('HGET', group_key(ns, g), 'limit')
  if own then return tonumber(own) end
  local default = tonumber(redis.call('HGET', key(ns, 'config'), 'group_default_limit'))
  if default and default > 0 then return default end
  return nil
end

local function group_refusal(g)
  if not g or #g == 0 or #g > 128 or not string.match(g, NAME_PATTERN) then
    return 'invalid group: 1-128 characters of letters, digits and . _ @ + -'
  end
  return nil
end

local function group_has_room(ns, g)
  local limit = group_limit(ns, g)
  return limit == nil or redis.call('SCARD', group_inflight_key(ns, g)) < limit
end

-- The head of the group's queue of `spec` in pending:<spec> when `room`, else out of it.
local function group_show(ns, g, spec, room)
  local head = redis.call('ZRANGE', group_pending_key(ns, g, spec), 0, 0, 'WITHSCORES')
  if #head == 0 then redis.call('SREM', group_specs_key(ns, g), spec) end
  local want = (room and #head > 0) and head[1] or nil
  local hk = group_heads_key(ns, g)
  local shown = redis.call('HGET', hk, spec) or nil
  if shown == want then return end
  if shown then redis.call('ZREM', pending_key(ns, spec), shown) end
  if want then
    redis.call('ZADD', pending_key(ns, spec), head[2], want)
    redis.call('HSET', hk, spec, want)
  else
    redis.call('HDEL', hk, spec)
  end
end

-- Every head of the group in or out of the pending sets, as its room says. Returns the room.
local function group_show_all(ns, g)
  local room = group_has_room(ns, g)
  for _, spec in ipairs(redis.call('SMEMBERS', group_specs_key(ns, g))) do
    group_show(ns, g, spec, room)
  end
  return room
end

-- Job `id` was just claimed: it takes a slot of its group and leaves the group's queue (and the
-- pending set, where it stood for the group); a group now full hides its other heads.
-- `j`: the job's group, spec and qmember (as assign read them).
local function group_claim(ns, id, j)
  if not j[1] or j[1] == '' then return end
  local g = j[1]
  redis.call('SADD', group_inflight_key(ns, g), id)
  redis.call('ZREM', group_pending_key(ns, g, j[2]), j[3])
  if redis.call('HGET', group_heads_key(ns, g), j[2]) == j[3] then
    redis.call('HDEL', group_heads_key(ns, g), j[2])
    redis.call('ZREM', pending_key(ns, j[2]), j[3])
  end
  group_show_all(ns, g)
end

local group_fill  -- (defined below pick_idle_runner, which it uses)

-- What a pod needs to send a `job` message (payload stays raw JSON text), from the values of
-- OFFER_FIELDS as HMGET returns them.
local OFFER_FIELDS = {'attempt', 'spec', 'payload', 'timeout', 'created'}
local function offer_of(id, v)
  return {job = id, attempt = tonumber(v[1]), spec = v[2], payload = v[3],
          timeout = tonumber(v[4]), created = tonumber(v[5])}
end

-- Assign job `id` to runner `name` as a new attempt. Returns its offer (offer_of). `specs`: the
-- runner's specs when the caller has them read already. One read and one write of each record
-- (every call here is a good part of the cost of a match).
local function assign(ns, id, name, now, cfg, specs)
  local jk = job_key(ns, id)
  local j = redis.call('HMGET', jk, 'attempt', 'spec', 'payload', 'timeout', 'created', 'group',
                       'qmember')
  local attempt = (tonumber(j[1]) or 0) + 1
  local deadline = now + cfg.start
  redis.call('HSET', jk, 'attempt', as_text(attempt), 'status', 'claimed', 'runner', name,
             'claimed', as_text(now), 'start_deadline', as_text(deadline), 'started', '',
             'lease_deadline', '')
  redis.call('ZADD', leases_key(ns), as_text(deadline), id)
  for _, spec in ipairs(specs or runner_specs(ns, name)) do  -- out of the idle sets
    redis.call('ZREM', idle_key(ns, spec), name)
  end
  redis.call('HSET', runner_key(ns, name), 'state', 'busy', 'job', id, 'attempt', as_text(attempt),
             'polling', '0')
  group_claim(ns, id, {j[6], j[2], j[7]})
  count(ns, 'dispatched')
  emit(ns, now, 'claimed', id, {attempt = attempt, runner = name})
  local offer = offer_of(id, j)  -- OFFER_FIELDS first, then group and qmember
  offer.attempt = attempt
  return offer
end

-- The longest-idle runner of `spec` on a live pod, dropping dead entries on the way. At most
-- MAX_STALE_DROPS dead entries per call (one call never does unbounded work): past that the job is
-- queued, and the next `ready` or poll end of a live runner takes it.
local MAX_STALE_DROPS = 64
local function pick_idle_runner(ns, spec, now)
  local ik = idle_key(ns, spec)
  for _ = 0, MAX_STALE_DROPS do
    local top = redis.call('ZRANGE', ik, 0, 0)
    if #top == 0 then return nil end
    local name = top[1]
    local r = redis.call('HMGET', runner_key(ns, name), 'pod', 'polling', 'job', 'conn')
    if pod_alive(ns, r[1], now) and r[2] == '1' and (r[3] == '' or not r[3]) then
      return name, r[1], r[4] or '0'
    end
    if r[1] then unidle(ns, name) else redis.call('ZREM', ik, name) end
  end
  return nil
end

-- '<seq>:<job id>' -> job id
local function qmember_id(member)
  return string.sub(member, string.find(member, ':', 1, true) + 1)
end

-- The group has room (again): its heads go back into the pending sets and, while room lasts,
-- to idle runners of their specs at once (an idle runner of a spec means nothing eligible of that
-- spec was pending, so the group's head is the best job it can get). Returns how many went out.
group_fill = function(ns, g, now, cfg)
  local given = 0
  for _, spec in ipairs(redis.call('SMEMBERS', group_specs_key(ns, g))) do
    while given < MAX_GROUP_FILL and group_has_room(ns, g) do
      local head = redis.call('ZRANGE', group_pending_key(ns, g, spec), 0, 0)
      if #head == 0 then break end
      local name, pod, conn = pick_idle_runner(ns, spec, now)
      if not name then break end
      local id = qmember_id(head[1])
      notify_offer(ns, pod, name, conn, assign(ns, id, name, now, cfg))  -- leaves the group's queue
      given = given + 1
    end
  end
  group_show_all(ns, g)
  return given
end

-- match_or_queue of a group job (`j`: its spec, priority, qmember, group): a re-queued job gives
-- its slot back; the job joins its group's queue, and goes out at once when the group has room
-- and a runner is idle.
local function group_queue(ns, id, j, now, cfg)
  local g, jk = j[4], job_key(ns, id)
  redis.call('SREM', group_inflight_key(ns, g), id)
  redis.call('HSET', jk, 'status', 'pending', 'runner', '', 'start_deadline', '',
             'lease_deadline', '', 'started', '', 'claimed', '')
  redis.call('ZADD', group_pending_key(ns, g, j[1]), -tonumber(j[2]), j[3])
  redis.call('SADD', group_specs_key(ns, g), j[1])
  group_fill(ns, g, now, cfg)
  local after = redis.call('HMGET', jk, 'status', 'runner')
  if after[1] == 'claimed' then return after[2] end
  return nil
end

-- Job `id` left its group's slots or queue for good (final, or waiting for a delayed retry): its
-- slot goes to the group's next pending job at once. Idempotent; nothing for a job without group.
-- `j`: the job's group, spec and qmember when the caller has them current already.
local function group_release(ns, id, now, j)
  j = j or redis.call('HMGET', job_key(ns, id), 'group', 'spec', 'qmember')
  if not j[1] or j[1] == '' then return end
  local freed = redis.call('SREM', group_inflight_key(ns, j[1]), id)
  redis.call('ZREM', group_pending_key(ns, j[1], j[2]), j[3])  -- a pending job canceled
  if freed == 1 then group_fill(ns, j[1], now, config(ns)) else group_show_all(ns, j[1]) end
end

-- A job is (again) ready to run: hand it to an idle runner at once, or queue it.
-- `fresh`: the job's spec, priority, qmember and group, from `submit`, which has just written the
-- whole record as pending (nothing to read, nothing to reset).
local function match_or_queue(ns, id, now, cfg, fresh)
  local jk = job_key(ns, id)
  local j = fresh or redis.call('HMGET', jk, 'spec', 'priority', 'qmember', 'group')
  if j[4] and j[4] ~= '' then return group_queue(ns, id, j, now, cfg) end
  local name, pod, conn = pick_idle_runner(ns, j[1], now)
  if name then
    notify_offer(ns, pod, name, conn, assign(ns, id, name, now, cfg))
    return name
  end
  if not fresh then
    redis.call('HSET', jk, 'status', 'pending', 'runner', '', 'start_deadline', '',
               'lease_deadline', '', 'started', '', 'claimed', '')
  end
  redis.call('ZADD', pending_key(ns, j[1]), -tonumber(j[2]), j[3])
  return nil
end

-- The best pending job over several specs: highest priority, then oldest (lowest member).
local function best_pending(ns, specs)
  local best_score, best_member, best_spec
  for _, spec in ipairs(specs) do
    local top = redis.call('ZRANGE', pending_key(ns, spec), 0, 0, 'WITHSCORES')
    if #top > 0 then
      local score = tonumber(top[2])
      if not best_score or score < best_score or (score == best_score and top[1] < best_member) then
        best_score, best_member, best_spec = score, top[1], spec
      end
    end
  end
  if not best_spec then return nil end
  redis.call('ZREM', pending_key(ns, best_spec), best_member)
  return string.sub(best_member, string.find(best_member, ':', 1, true) + 1)
end

local function job_offer(ns, id)
  return offer_of(id, redis.call('HMGET', job_key(ns, id), unpack(OFFER_FIELDS)))
end

-- ---------------------------------------------------------------------------------------------
-- attempt history, retries by failure class, ephemeral runners (the outcome side)
-- ---------------------------------------------------------------------------------------------

-- The record's `history` field: a JSON list, one entry per ended attempt, oldest first, at most
-- HISTORY_MAX entries (the oldest dropped past it) with at most HISTORY_ERROR_MAX bytes of error
-- each, so the record stays small (max_attempts, retries and lost starts are all bounded anyway).
local HISTORY_MAX = 100
local HISTORY_ERROR_MAX = 512
local MAX_RETRIES = 100
local MAX_RETRY_DELAY_S = 24 * 3600

-- Log how job `id`'s current attempt ended: status completed|failed|canceled|lost, times in ms.
-- An entry for the same attempt is replaced (a `completed` that overrides a lease-expiry failure).
-- `into`: a table of fields the caller writes next; the history goes there instead of its own HSET.
local function log_attempt(ns, id, status, error, now, exit_code, retried, into)
  local jk = job_key(ns, id)
  local j = redis.call('HMGET', jk, 'attempt', 'runner', 'claimed', 'started', 'history')
  local entry = {attempt = tonumber(j[1]), runner = j[2] or '', status = status,
                 exit_code = tonumber(exit_code or nil), error = string.sub(error or '', 1, HISTORY_ERROR_MAX),
                 claimed = tonumber(j[3]), started = tonumber(j[4]), finished = now,
                 retried = retried or nil}
  local history = {}
  if j[5] and j[5] ~= '' then history = cjson.decode(j[5]) end
  if #history > 0 and history[#history].attempt == entry.attempt then
    history[#history] = entry
  else
    history[#history + 1] = entry
  end
  while #history > HISTORY_MAX do table.remove(history, 1) end
  if into then into.history = cjson.encode(history) return end
  redis.call('HSET', jk, 'history', cjson.encode(history))
end

-- Whether a `failed` reported by the runner gets another attempt (retries left).
local function retry_left(ns, id)
  local r = redis.call('HMGET', job_key(ns, id), 'retries', 'retries_used')
  return (tonumber(r[2]) or 0) < (tonumber(r[1]) or 0)
end

-- The runner reported `failed` and a retry is left: log the attempt, free the runner, and queue
-- the job again, at once through `match_or_queue` (so matching rules apply as to any job) or,
-- with a retry_delay, through the delayed set the tick empties (`release_due_retries`). Not a
-- final outcome: nothing goes to the results outbox or the done channel.
-- Returns the job's status afterwards.
local function retry_job(ns, id, name, now, exit_code, error)
  local jk = job_key(ns, id)
  log_attempt(ns, id, 'failed', error, now, exit_code, true)
  local used = redis.call('HINCRBY', jk, 'retries_used', 1)
  -- an attempt that reached `running` is in `runs`: spent on a retry, it is no infrastructure
  -- failure (expire_lease); one failed straight from `claimed` never was in `runs`
  if redis.call('HGET', jk, 'status') == 'running' then
    redis.call('HINCRBY', jk, 'retried_runs', 1)
  end
  local delay = math.floor((tonumber(redis.call('HGET', jk, 'retry_delay')) or 0) * 1000)
  redis.call('ZREM', leases_key(ns), id)
  free_runner(ns, name, id, now)
  count(ns, 'retried')
  emit(ns, now, 'retry', id, {attempt = redis.call('HGET', jk, 'attempt'), runner = name,
                              retry = used, delay_ms = delay})
  -- the outcome of that attempt lives on in the history; the record shows the next attempt
  redis.call('HDEL', jk, 'exit_code', 'results', 'stdout', 'stderr', 'error', 'finished')
  if delay <= 0 then
    match_or_queue(ns, id, now, config(ns))
    return redis.call('HGET', jk, 'status'), 0
  end
  redis.call('HSET', jk, 'status', 'pending', 'runner', '', 'start_deadline', '',
             'lease_deadline', '', 'started', '', 'claimed', '', 'retry_at', tostring(now + delay))
  redis.call('ZADD', delayed_key(ns), now + delay, id)
  group_release(ns, id, now)  -- (waiting for the retry holds no slot of its group)
  return 'pending', delay
end

-- Delayed retries due by `now` go to matching, at most `max_moves` per call (bounded work; the
-- next tick takes the rest). Compare-and-set: a job canceled meanwhile is skipped.
local function release_due_retries(ns, now, max_moves)
  local due = redis.call('ZRANGEBYSCORE', delayed_key(ns), '-inf', now, 'LIMIT', 0, max_moves)
  if #due == 0 then return 0 end
  local cfg = config(ns)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed_key(ns), id)
    local j = redis.call('HMGET', job_key(ns, id), 'status', 'retry_at')
    if j[1] == 'pending' and j[2] and j[2] ~= '' then
      redis.call('HDEL', job_key(ns, id), 'retry_at')
      match_or_queue(ns, id, now, cfg)
    end
  end
  return #due
end

-- A job waiting for its delayed retry leaves the delayed set (cancel).
local function unschedule_retry(ns, id)
  if redis.call('ZREM', delayed_key(ns), id) == 1 then redis.call('HDEL', job_key(ns, id), 'retry_at') end
end

-- An ephemeral runner's registration ends with its first attempt, in the call that ends it: the
-- token is refused from then on (a reconnect gets 401). `ring`: tell its pod, which closes the
-- connection with 4001; false from `finish`, whose pod closes it itself after the ack (so the
-- runner gets its ack first). Returns true when the runner was removed.
-- `r`: the runner's ephemeral and pod fields when the caller has them current already.
local function retire_if_ephemeral(ns, name, now, ring, r)
  local rk = runner_key(ns, name)
  r = r or redis.call('HMGET', rk, 'ephemeral', 'pod')
  if r[1] ~= '1' then return false end
  unidle(ns, name)
  redis.call('DEL', rk)
  redis.call('SREM', key(ns, 'runners'), name)
  if r[2] and r[2] ~= '' then
    redis.call('SREM', pod_runners_key(ns, r[2]), name)
    if ring then notify(ns, r[2], name) end
  end
  emit(ns, now, 'runner_retired', '', {runner = name})
  return true
end

-- `submit`'s optional ARGV[8] retries (integer 0..MAX_RETRIES, '' or absent = 0) and ARGV[9]
-- retry_delay (seconds 0..MAX_RETRY_DELAY_S): the two as stored texts, or nil and the error.
local function retry_options(retries_arg, delay_arg)
  local retries = tonumber((retries_arg ~= '' and retries_arg) or '0')
  local delay = tonumber((delay_arg ~= '' and delay_arg) or '0')
  if not retries or retries < 0 or retries > MAX_RETRIES or retries ~= math.floor(retries) then
    return nil, 'invalid retries: must be an integer from 0 to ' .. MAX_RETRIES
  end
  if not delay or delay < 0 or delay > MAX_RETRY_DELAY_S or delay ~= delay then
    return nil, 'invalid retry_delay: must be a number of seconds from 0 to ' .. MAX_RETRY_DELAY_S
  end
  return {string.format('%d', retries), tostring(delay)}
end

-- Whether an existing job's retry options are `opts` (an idempotent submit); records written
-- before retries existed have none, which means 0 and 0.
local function same_retry_options(ns, id, opts)
  local have = redis.call('HMGET', job_key(ns, id), 'retries', 'retry_delay')
  return (have[1] or '0') == opts[1] and (have[2] or '0') == opts[2]
end

-- `finalize`'s part: the attempt in flight ends (or a `completed` replaces the lease-expiry
-- failure of the same attempt); a pending job that is canceled had no attempt running.
local function log_final_attempt(ns, id, status, error, now, extra, prev, into)
  prev = prev or redis.call('HGET', job_key(ns, id), 'status')
  if IN_FLIGHT[prev] or status == 'completed' then
    log_attempt(ns, id, status, error, now, extra and extra.exit_code, nil, into)
  end
end

-- ---------------------------------------------------------------------------------------------
-- ending attempts (reaper, rule 1, cancel)
-- ---------------------------------------------------------------------------------------------

-- Record a terminal outcome of the job's current attempt, and append '<job>:<attempt>' to the
-- results outbox in the same call: whoever decided the outcome (a runner's message, the reaper, a
-- cancel) may die right after, and the result writers still get it. Score = when the entry is
-- due for the pump (now); the pump re-scores it while a batch holds it.
-- `known`: the job's status, attempt and group fields ({group, spec, qmember}) when the caller
-- has them current already (`finish`).
local function finalize(ns, id, status, error, now, extra, known)
  local jk = job_key(ns, id)
  local fields = extra or {}
  log_final_attempt(ns, id, status, error, now, extra, known and known.status, fields)
  fields.status, fields.error, fields.finished = status, error or '', as_text(now)
  write_fields(jk, fields)
  redis.call('ZREM', leases_key(ns), id)
  count(ns, status)
  local attempt = (known and known.attempt) or redis.call('HGET', jk, 'attempt')
  emit(ns, now, status, id, {attempt = attempt, error = error or ''})
  if status ~= 'completed' then publish_done(ns, id) end
  redis.call('ZADD', outbox_key(ns), as_text(now), id .. ':' .. attempt)
  group_release(ns, id, now, known and known.group)
end

-- The attempt of job `j` (a load_job table) is lost: tell its runner's pod, free the runner.
local function drop_attempt(ns, j, now)
  if j.runner and j.runner ~= '' then
    local pod = free_runner(ns, j.runner, j.id, now)
    if not retire_if_ephemeral(ns, j.runner, now, true) then notify(ns, pod, j.runner) end
  end
end

-- Start deadline passed: back to the queue (not counted as an attempt) or fail after 5 in a row.
local function expire_start(ns, j, now, cfg)
  drop_attempt(ns, j, now)
  local lost = redis.call('HINCRBY', job_key(ns, j.id), 'lost_starts', 1)
  emit(ns, now, 'start_expired', j.id, {attempt = j.attempt, runner = j.runner})
  if lost >= MAX_LOST_STARTS then
    finalize(ns, j.id, 'failed', 'not started', now)
    return 'failed'
  end
  log_attempt(ns, j.id, 'lost', 'not started', now)
  match_or_queue(ns, j.id, now, cfg)
  return 'requeued'
end

-- Lease passed: re-queue while attempts remain, else fail with `lease expired`.
local function expire_lease(ns, j, now, cfg)
  drop_attempt(ns, j, now)
  emit(ns, now, 'lease_expired', j.id, {attempt = j.attempt, runner = j.runner})
  -- max_attempts counts infrastructure failures only: runs spent on retries are not counted
  local retried = tonumber(redis.call('HGET', job_key(ns, j.id), 'retried_runs')) or 0
  if tonumber(j.runs) - retried < tonumber(j.max_attempts) then
    log_attempt(ns, j.id, 'lost', 'lease expired', now)
    match_or_queue(ns, j.id, now, cfg)
    return 'requeued'
  end
  finalize(ns, j.id, 'failed', 'lease expired', now, {failed_by = 'lease'})
  return 'failed'
end

local function cancel_job(ns, j, reason, now)
  if j.status == 'pending' then
    redis.call('ZREM', pending_key(ns, j.spec), j.qmember)
    unschedule_retry(ns, j.id)
  elseif IN_FLIGHT[j.status] then
    drop_attempt(ns, j, now)
  end
  finalize(ns, j.id, 'canceled', reason, now, {cancel_reason = reason})
end

-- One due lease entry. Returns the outcome or nil when not due yet (then re-scored).
-- `loaded`: the job's current START_FIELDS (at least) when the caller has them (hot paths); a
-- deadline that passed has the whole record read before the attempt ends.
local function reap_job(ns, id, now, cfg, loaded)
  local j = loaded or load_job(ns, id)
  if not IN_FLIGHT[j.status] then
    redis.call('ZREM', leases_key(ns), id)
    return nil
  end
  if j.status == 'claimed' then
    if now >= tonumber(j.start_deadline) then
      return expire_start(ns, load_job(ns, id), now, cfg)
    end
  else
    if now >= hard_deadline(j, cfg) then
      cancel_job(ns, load_job(ns, id), 'timeout', now)
      return 'timeout'
    end
    if now >= tonumber(j.lease_deadline) then
      return expire_lease(ns, load_job(ns, id), now, cfg)
    end
  end
  redis.call('ZADD', leases_key(ns), as_text(next_deadline(j, cfg)), id)
  return nil
end

-- Rule 1: a runner whose record still holds a job says `ready`: that attempt ends now. Returns
-- true when that ended an ephemeral runner's registration (as every other end of its attempt
-- does): the caller must then give it nothing.
local function end_orphaned_attempt(ns, name, now, cfg)
  local r = redis.call('HMGET', runner_key(ns, name), 'job', 'attempt')
  if not r[1] or r[1] == '' then return false end
  local j = load_job(ns, r[1])
  redis.call('HSET', runner_key(ns, name), 'job', '', 'attempt', '')
  if j.runner == name and j.attempt == r[2] and IN_FLIGHT[j.status] then
    j.runner = ''  -- already freed above; nothing to notify
    if j.status == 'claimed' then expire_start(ns, j, now, cfg) else expire_lease(ns, j, now, cfg) end
    return retire_if_ephemeral(ns, name, now, true)
  end
  return false
end

-- ---------------------------------------------------------------------------------------------
-- producer functions
-- ---------------------------------------------------------------------------------------------

-- A version-4-shaped UUID for producers that pass none (unique: it hashes the namespace's
-- sequence number, which never repeats).
local function new_job_id(ns, seq, now)
  local h = redis.sha1hex(ns .. ':' .. seq .. ':' .. now)
  local variant = string.sub('89ab', tonumber(string.sub(h, 17, 17), 16) % 4 + 1)
  variant = string.sub(variant, 1, 1)
  return string.sub(h, 1, 8) .. '-' .. string.sub(h, 9, 12) .. '-4' .. string.sub(h, 14, 16) .. '-'
         .. variant .. string.sub(h, 18, 20) .. '-' .. string.sub(h, 21, 32)
end

--[[ dispatch_v3_submit
ARGV: ns, job_id ('' = generate a UUID), spec, payload (JSON text), priority (integer),
      timeout (seconds > 0), max_attempts (integer >= 1, counts infrastructure failures),
      then optionally retries (integer 0..100: how often a `failed` from the runner is queued
      again; '' = 0) and retry_delay (seconds 0..86400 before such a retry; '' = 0), and group
      ('' or absent: none; see "concurrency groups")
Keys: job (when the id is given), seq, specs, pending:<spec>, idle:<spec>, leases, config, stats,
      events, and with a group: groups, group:<g>, its inflight, specs, heads and pending:<spec>;
      found at run time: the runner picked and its pod's inbox/bell, pods.
Reply: the job id (plain string). Errors on invalid input, changing nothing.
Invariant: the job is either in its spec's pending set or claimed by exactly one idle runner on a
live pod, decided in this one call. Idempotent for a given id: the same id with the same spec,
payload, priority, timeout, max_attempts, retries and retry_delay returns the existing job and
changes nothing (a producer may retry a submit whose reply it lost); other content under that id
is an error.
]]
local function submit(keys, args)
  local ns, id, spec, payload = args[1], args[2], args[3], args[4]
  local priority, timeout, max_attempts = tonumber(args[5]), tonumber(args[6]), tonumber(args[7])
  if not spec or #spec == 0 or #spec > 128 or not string.match(spec, SPEC_PATTERN) then
    return fail('invalid spec: 1-128 characters of letters, digits and . _ / @ + -')
  end
  if not payload or #payload > MAX_PAYLOAD_BYTES or not pcall(cjson.decode, payload) then
    return fail('invalid payload: must be JSON of at most ' .. MAX_PAYLOAD_BYTES .. ' bytes')
  end
  if not priority or priority ~= math.floor(priority) or math.abs(priority) > 9007199254740991 then
    return fail('invalid priority: must be an integer')
  end
  if not timeout or timeout <= 0 or timeout > MAX_TIMEOUT_S then
    return fail('invalid timeout: must be a number of seconds > 0 and <= ' .. MAX_TIMEOUT_S)
  end
  if not max_attempts or max_attempts < 1 or max_attempts > 100 or max_attempts ~= math.floor(max_attempts) then
    return fail('invalid max_attempts: must be an integer from 1 to 100')
  end
  local retry_opts, bad_retry = retry_options(args[8] or '', args[9] or '')
  if not retry_opts then return fail(bad_retry) end
  local group = args[10] or ''
  if group ~= '' and group_refusal(group) then return fail(group_refusal(group)) end
  local priority_text = string.format('%d', priority)
  if id and id ~= '' then
    if not string.match(id, UUID_PATTERN) then return fail('invalid job id: must be a UUID') end
    -- idempotent: the same submission again (a producer retrying after a lost reply) returns
    -- the job it created; other content under that id is refused
    local have = redis.call('HMGET', job_key(ns, id), 'spec', 'payload', 'priority', 'timeout',
                            'max_attempts')
    if have[1] then
      if have[1] == spec and have[2] == payload and have[3] == priority_text
         and have[4] == tostring(timeout) and have[5] == tostring(max_attempts)
         and same_retry_options(ns, id, retry_opts)
         and (redis.call('HGET', job_key(ns, id), 'group') or '') == group then
        return id
      end
      return fail('job ' .. id .. ' already exists with different content')
    end
  end
  local now = now_ms()
  local seq = redis.call('INCR', key(ns, 'seq'))
  if not id or id == '' then id = new_job_id(ns, seq, now) end
  local jk = job_key(ns, id)
  local qmember = string.format('%016d', seq) .. ':' .. id
  redis.call('HSET', jk, 'id', id, 'spec', spec, 'payload', payload, 'priority', priority_text,
             'timeout', tostring(timeout), 'max_attempts', tostring(max_attempts), 'attempt', '0',
             'status', 'pending', 'runner', '', 'created', as_text(now), 'qmember', qmember,
             'lost_starts', '0', 'runs', '0', 'retries', retry_opts[1],
             'retry_delay', retry_opts[2], 'retries_used', '0', 'start_deadline', '',
             'lease_deadline', '', 'started', '', 'claimed', '')
  redis.call('SADD', key(ns, 'specs'), spec)
  if group ~= '' then redis.call('HSET', jk, 'group', group); redis.call('SADD', groups_key(ns), group) end
  count(ns, 'submitted')
  emit(ns, now, 'submitted', id, {spec = spec, priority = priority_text})
  match_or_queue(ns, id, now, config(ns), {spec, priority_text, qmember, group})
  return id
end

--[[ dispatch_v3_cancel
ARGV: ns, job_id, reason ('canceled' by default)
Keys: job, leases, outbox, stats, events, delayed, runners (an ephemeral runner retired); found
      at run time: pending:<spec>, the runner and its pod's inbox/bell; publishes on done.
Reply: 1 when this call canceled the job, 0 when it was already final. Error when unknown.
Invariant: a pending job leaves its queue; a claimed/running one frees its runner and its pod is
told to push `cancel`; the status is `canceled` at once.
]]
local function cancel(keys, args)
  local ns, id, reason = args[1], args[2], args[3]
  if not reason or reason == '' then reason = 'canceled' end
  local j = load_job(ns, id)
  if not j.status then return fail('no such job: ' .. id) end
  if FINAL[j.status] then return 0 end
  cancel_job(ns, j, reason, now_ms())
  return 1
end

-- ---------------------------------------------------------------------------------------------
-- runner registry
-- ---------------------------------------------------------------------------------------------

--[[ dispatch_v3_runner_add
ARGV: ns, name, token_sha256_hex, specs (JSON list of spec strings), optionally ephemeral ('1':
      the registration is removed by the call that ends the runner's first attempt)
Keys: runner:<name>, runners, specs, events
Reply: 1. Error when the name exists or a spec is invalid.
]]
local function runner_add(keys, args)
  local ns, name, token_hash, specs_json = args[1], args[2], args[3], args[4]
  if not string.match(name, NAME_PATTERN) or #name > 128 then
    return fail('invalid runner name: 1-128 characters of letters, digits and . _ @ + -')
  end
  local ok, specs = pcall(cjson.decode, specs_json)
  if not ok or type(specs) ~= 'table' or #specs == 0 then return fail('at least one spec is needed') end
  for _, spec in ipairs(specs) do
    if type(spec) ~= 'string' or #spec > 128 or not string.match(spec, SPEC_PATTERN) then
      return fail('invalid spec: ' .. tostring(spec))
    end
  end
  local rk = runner_key(ns, name)
  if redis.call('EXISTS', rk) == 1 then return fail('runner ' .. name .. ' already exists') end
  local now = now_ms()
  redis.call('HSET', rk, 'name', name, 'token_hash', token_hash, 'specs', specs_json,
             'state', 'offline', 'pod', '', 'conn', '0', 'job', '', 'attempt', '', 'polling', '0',
             'created', as_text(now), 'last_seen', '', 'idle_since', as_text(now))
  if args[5] == '1' then redis.call('HSET', rk, 'ephemeral', '1') end  -- see retire_if_ephemeral
  redis.call('SADD', key(ns, 'runners'), name)
  for _, spec in ipairs(specs) do redis.call('SADD', key(ns, 'specs'), spec) end
  emit(ns, now, 'runner_added', '', {runner = name})
  return 1
end

--[[ dispatch_v3_runner_revoke
ARGV: ns, name
Keys: runner:<name>, runners, events; found at run time: idle:<spec> of its specs, its pod's
      runners/inbox/bell.
Reply: 1, or error when unknown. Invariant: the runner leaves every idle set; its token stops
working; the pod holding it is told (it closes the socket with 4001). A job in flight keeps its
lease and is reaped like any job whose runner vanished.
]]
local function runner_revoke(keys, args)
  local ns, name = args[1], args[2]
  local rk = runner_key(ns, name)
  if redis.call('EXISTS', rk) == 0 then return fail('no such runner: ' .. name) end
  unidle(ns, name)
  local pod = redis.call('HGET', rk, 'pod')
  redis.call('DEL', rk)
  redis.call('SREM', key(ns, 'runners'), name)
  if pod and pod ~= '' then
    redis.call('SREM', pod_runners_key(ns, pod), name)
    notify(ns, pod, name)
  end
  emit(ns, now_ms(), 'runner_revoked', '', {runner = name})
  return 1
end

-- ---------------------------------------------------------------------------------------------
-- connection lifecycle (called by pods)
-- ---------------------------------------------------------------------------------------------

--[[ dispatch_v3_attach
ARGV: ns, runner, pod
Keys: runner:<runner>, pod:<pod>:runners; found at run time: idle:<spec> of its specs, the previous
      pod's runners/inbox/bell.
Reply: {"conn": generation, "job": id or "", "attempt": n or null}; error when unknown.
Invariant: the runner's record names exactly one live connection (pod + generation); a previous
connection on another pod is told through that pod's inbox (it closes with 4002).
]]
local function attach(keys, args)
  local ns, name, pod = args[1], args[2], args[3]
  local rk = runner_key(ns, name)
  if redis.call('EXISTS', rk) == 0 then return fail('no such runner: ' .. name) end
  local now = now_ms()
  unidle(ns, name)
  local conn = redis.call('HINCRBY', rk, 'conn', 1)
  local r = redis.call('HMGET', rk, 'pod', 'job', 'attempt')
  if r[1] and r[1] ~= '' and r[1] ~= pod then
    redis.call('SREM', pod_runners_key(ns, r[1]), name)
    notify(ns, r[1], name)
  end
  local state = (r[2] and r[2] ~= '') and 'busy' or 'idle'
  redis.call('HSET', rk, 'pod', pod, 'state', state, 'last_seen', as_text(now))
  redis.call('SADD', pod_runners_key(ns, pod), name)
  return cjson.encode({conn = conn, job = r[2] or '', attempt = tonumber(r[3])})
end

--[[ dispatch_v3_detach
ARGV: ns, runner, pod, conn
Keys: runner:<runner>, pod:<pod>:runners; found at run time: idle:<spec> of its specs.
Reply: 1 when this connection was the runner's current one, else 0.
Invariant: a job in flight keeps its lease (the runner may re-attach elsewhere).
]]
local function detach(keys, args)
  local ns, name, pod, conn = args[1], args[2], args[3], args[4]
  local rk = runner_key(ns, name)
  local r = redis.call('HMGET', rk, 'conn', 'pod', 'job')
  if r[1] ~= conn or r[2] ~= pod then return 0 end
  unidle(ns, name)
  local state = (r[3] and r[3] ~= '') and 'busy' or 'offline'
  redis.call('HSET', rk, 'pod', '', 'state', state, 'last_seen', as_text(now_ms()))
  redis.call('SREM', pod_runners_key(ns, pod), name)
  return 1
end

local function current_conn(ns, name, conn)
  return redis.call('HGET', runner_key(ns, name), 'conn') == conn
end

-- ---------------------------------------------------------------------------------------------
-- pause (runner_pause below; `ready` parks a paused runner)
-- ---------------------------------------------------------------------------------------------

-- A paused runner's `ready` gets nothing. In mode 'wait' its poll stays open on its pod, marked
-- `polling` but in no idle set (no match can find it), so `runner_pause` can hand it work the
-- moment it is resumed. Returns the reply, or nil when the runner is not paused.
local function park_if_paused(rk, mode, paused)
  if paused == nil then paused = redis.call('HGET', rk, 'paused') end
  if paused ~= '1' then return nil end
  if mode == 'try' then return cjson.encode({result = 'none'}) end
  redis.call('HSET', rk, 'polling', '1')
  return cjson.encode({result = 'idle'})
end

--[[ dispatch_v3_ready
ARGV: ns, runner, conn, info (JSON object or ''), mode ('wait' by default, or 'try')
Keys: runner:<runner>, leases, config, outbox, stats, events, runners (an ephemeral runner retired
      by rule 1); found at run time: pending:<spec> and idle:<spec> of its specs, the job it gets
      or held (rule 1) and what re-queuing that touches.
Reply: {"result": "job", ...offer} | {"result": "idle"} | {"result": "none"} (mode 'try') |
{"result": "stale"} (not the current connection, or an ephemeral runner whose held attempt this
call ended: its registration is gone and its pod told).
Invariant: the runner either gets the best pending job over its specs (priority, then age) or, in
mode 'wait', enters every idle set of its specs, never both. Mode 'try' (the polling baseline,
DISPATCHER_WAKE=poll) never enters the idle sets: the pod asks again after its poll interval.
A paused runner gets nothing and enters no idle set (`park_if_paused`).
]]
local function ready(keys, args)
  local ns, name, conn, info, mode = args[1], args[2], args[3], args[4], args[5]
  local rk = runner_key(ns, name)
  -- what this call reads of the runner, in one command (read again after rule 1 changed it)
  local fields = {'conn', 'job', 'paused', 'specs', 'idle_since'}
  local r = redis.call('HMGET', rk, unpack(fields))
  if r[1] ~= conn then return cjson.encode({result = 'stale'}) end
  local now, cfg = now_ms(), config(ns)
  if r[2] and r[2] ~= '' then
    if end_orphaned_attempt(ns, name, now, cfg) then return cjson.encode({result = 'stale'}) end
    r = redis.call('HMGET', rk, unpack(fields))
  end
  if info and info ~= '' then redis.call('HSET', rk, 'info', info) end
  redis.call('HSET', rk, 'state', 'idle', 'last_seen', as_text(now))
  local parked = park_if_paused(rk, mode, r[3])
  if parked then return parked end
  local specs = r[4] and cjson.decode(r[4]) or {}
  local id = best_pending(ns, specs)
  if id then
    local offer = assign(ns, id, name, now, cfg, specs)
    offer.result = 'job'
    return cjson.encode(offer)
  end
  if mode == 'try' then return cjson.encode({result = 'none'}) end
  local since = r[5] or as_text(now)
  for _, spec in ipairs(specs) do redis.call('ZADD', idle_key(ns, spec), since, name) end
  redis.call('HSET', rk, 'polling', '1')
  return cjson.encode({result = 'idle'})
end

--[[ dispatch_v3_poll_end
ARGV: ns, runner, conn, mode ('offer' by default, or 'release')
Keys: runner:<runner>, leases, config, stats, events; found at run time: idle:<spec> of its specs,
      the job it holds and what re-queuing that touches.
Reply: {"result": "job", ...offer} when a job was assigned a moment earlier (mode 'offer'), or
{"result": "released", "job", "attempt"} when such a job went back to the queue (mode 'release':
the pod cannot send it, the runner did not ask; the pod then never sends that attempt, even if its
match's bell is still on the way), else {"result": "none"} or {"result": "stale"}.
Invariant: afterwards the runner is in no idle set and holds no undelivered job.
]]
local function poll_end(keys, args)
  local ns, name, conn, mode = args[1], args[2], args[3], args[4]
  if not current_conn(ns, name, conn) then return cjson.encode({result = 'stale'}) end
  unidle(ns, name)
  local r = redis.call('HMGET', runner_key(ns, name), 'job', 'attempt')
  if r[1] and r[1] ~= '' then
    local j = load_job(ns, r[1])
    if j.status == 'claimed' and j.attempt == r[2] and j.runner == name then
      if mode ~= 'release' then
        local offer = job_offer(ns, r[1])
        offer.result = 'job'
        return cjson.encode(offer)
      end
      local now = now_ms()
      free_runner(ns, name, j.id, now)
      redis.call('ZREM', leases_key(ns), j.id)
      emit(ns, now, 'released', j.id, {attempt = j.attempt, runner = name})
      match_or_queue(ns, j.id, now, config(ns))
      return cjson.encode({result = 'released', job = j.id, attempt = tonumber(j.attempt)})
    end
  end
  return cjson.encode({result = 'none'})
end

--[[ dispatch_v3_observe
ARGV: ns, pod, runner, local_job ('' when the connection has none)
Keys: pod:<pod>:inbox, runner:<runner>, job:<local_job> (when given); found at run time: the job
      the runner holds.
Reply: {"exists", "conn", "pod", "polling" (in the idle sets),
        "offer" (a claimed job waiting for this runner, or null),
        "local": {"status", "attempt", "runner", "cancel_reason"} of local_job or null}
Removes the runner from the pod's inbox first, so any later change rings again.
]]
local function observe(keys, args)
  local ns, pod, name, local_job = args[1], args[2], args[3], args[4]
  redis.call('SREM', pod_inbox_key(ns, pod), name)
  local r = redis.call('HMGET', runner_key(ns, name), 'conn', 'pod', 'job', 'attempt', 'polling')
  local out = {exists = r[1] ~= false, conn = r[1] or '', pod = r[2] or '', polling = r[5] == '1'}
  if r[3] and r[3] ~= '' then
    local j = redis.call('HMGET', job_key(ns, r[3]), 'status', 'attempt')
    if j[1] == 'claimed' and j[2] == r[4] then out.offer = job_offer(ns, r[3]) end
  end
  if local_job ~= '' then
    local j = redis.call('HMGET', job_key(ns, local_job), 'status', 'attempt', 'runner', 'cancel_reason')
    out['local'] = {status = j[1] or '', attempt = tonumber(j[2]), runner = j[3] or '',
                    cancel_reason = j[4] or ''}
  end
  return cjson.encode(out)
end

-- Fence a runner's job-scoped message. Returns the job table, or nil and the reply to send.
local function fence(ns, name, id, attempt, fields)
  if redis.call('EXISTS', runner_key(ns, name)) == 0 then return nil, 'stale' end  -- revoked
  local j = load_job(ns, id, fields)
  if not j.status then return nil, 'unknown' end
  if j.runner ~= name or j.attempt ~= attempt then return nil, 'stale' end
  return j
end

-- `running`/`heartbeat` on a job that is no longer ours: why, as a cancel reason.
local PUSHED_REASONS = {canceled = true, timeout = true}
local function lost_reason(j)
  if j and j.status == 'canceled' and PUSHED_REASONS[j.cancel_reason] then return j.cancel_reason end
  return 'lease_lost'
end

--[[ dispatch_v3_start
ARGV: ns, runner, job, attempt, then optionally pod and conn (the connection the `running` came
      on; both '' or absent: no inbox to settle)
Keys: runner:<runner>, job:<job>, leases, config, events, outbox, stats, runners (the last three
      when past timeout + grace the job is canceled, which retires an ephemeral runner),
      pod:<pod>:inbox (with pod); publishes on done.
Reply: {"result": "ok"} or {"result": "cancel", "reason": ...}.
Invariant: only the runner holding the job's current attempt can start it or re-attach to it;
a running job's lease and the runner record (busy, this job) are renewed. With pod and conn, an
"ok" also takes the runner out of that pod's inbox when `conn` is still its connection: the pod
then holds what Redis holds (this job and attempt running on that connection), so any news the
inbox kept for the runner is already settled (every ring changes the runner's conn, job or
record, or the job's status, which this call has just checked). It spares the pod an `observe`
after each job a match's bell delivered; news after this call rings and adds the runner again.
]]
local function start(keys, args)
  local ns, name, id, attempt = args[1], args[2], args[3], args[4]
  local j = fence(ns, name, id, attempt, START_FIELDS)
  if not j or not IN_FLIGHT[j.status] then
    return cjson.encode({result = 'cancel', reason = lost_reason(j)})
  end
  local now, cfg = now_ms(), config(ns)
  local jk = job_key(ns, id)
  j.lease_deadline = as_text(now + cfg.lease)
  if j.status == 'claimed' then  -- one HSET: `runs` + 1 (as HINCRBY would), the lease renewed
    redis.call('HSET', jk, 'status', 'running', 'started', as_text(now), 'lost_starts', '0',
               'runs', as_text((tonumber(j.runs) or 0) + 1), 'lease_deadline', j.lease_deadline)
    j.status, j.started, j.lost_starts = 'running', as_text(now), '0'
    emit(ns, now, 'running', id, {attempt = attempt, runner = name})
  else
    redis.call('HSET', jk, 'lease_deadline', j.lease_deadline)
  end
  if reap_job(ns, id, now, cfg, j) == 'timeout' then
    return cjson.encode({result = 'cancel', reason = 'timeout'})
  end
  local rk = runner_key(ns, name)
  redis.call('HSET', rk, 'state', 'busy', 'job', id, 'attempt', attempt, 'last_seen', as_text(now))
  local pod, conn = args[5], args[6]
  if pod and pod ~= '' and conn and redis.call('HGET', rk, 'conn') == conn then
    redis.call('SREM', pod_inbox_key(ns, pod), name)
  end
  return cjson.encode({result = 'ok'})
end

--[[ dispatch_v3_heartbeat
ARGV: ns, runner, job, attempt
Keys: as dispatch_v3_start.
Reply: {"result": "ok"} or {"result": "cancel", "reason": ...}.
Invariant: extends the lease of a running job owned by this runner and attempt; a claimed job is
left as it is (it still has to send `running`); past timeout + grace the job is canceled.
]]
local function heartbeat(keys, args)
  local ns, name, id, attempt = args[1], args[2], args[3], args[4]
  local j = fence(ns, name, id, attempt, START_FIELDS)
  if not j or not IN_FLIGHT[j.status] then
    return cjson.encode({result = 'cancel', reason = lost_reason(j)})
  end
  if j.status == 'running' then
    local now, cfg = now_ms(), config(ns)
    j.lease_deadline = as_text(now + cfg.lease)
    redis.call('HSET', job_key(ns, id), 'lease_deadline', j.lease_deadline)
    if reap_job(ns, id, now, cfg, j) == 'timeout' then
      return cjson.encode({result = 'cancel', reason = 'timeout'})
    end
  end
  return cjson.encode({result = 'ok'})
end

--[[ dispatch_v3_finish
ARGV: ns, runner, job, attempt, status (completed|failed|canceled), then four optional values
      exit_code, results (JSON text), stdout, stderr, each '' when absent or '=' + the value,
      then error (text).
Keys: runner:<runner>, job:<job>, leases, config, events, outbox, stats, delayed, runners;
      found at run time: what re-queuing a retried job touches (pending/idle sets, the runner
      picked and its pod's inbox/bell), the ephemeral runner's idle sets and pod:<pod>:runners;
      publishes on done.
Reply: {"result": "recorded"|"duplicate"|"stale"|"unknown", "status": current status,
        "override": true when a `completed` replaced a lease-expiry failure of the same attempt,
        "retry": true when a `failed` was not final (a retry was left: the job is queued again),
        "retry_in": with "retry", ms until a delayed retry is due (0: queued at once; the pod
        sweeps then, so the retry does not wait for the namespace's next sweep),
        "retired": true when the runner was ephemeral and is now removed (the pod acknowledges,
        then closes the connection with 4001)}.
Invariant: the first terminal state of an attempt wins (fenced by job + attempt + runner), except
that `completed` replaces a `failed` the server recorded only because the lease expired; the
runner is freed; the lease is dropped; the attempt's outcome is in the record's history; a
`failed` with retries left (retries_used < retries) goes back to matching, at once or after
retry_delay, and is no result; any other recorded outcome is in the results outbox when this
returns (PROTOCOL rule 4: the pod acknowledges right after this call, nothing else is needed).
]]
local function finish(keys, args)
  local ns, name, id, attempt, status = args[1], args[2], args[3], args[4], args[5]
  local j, why = fence(ns, name, id, attempt, FINISH_FIELDS)
  if not j then return cjson.encode({result = why, status = ''}) end
  local override = status == 'completed' and j.status == 'failed' and j.failed_by == 'lease'
  if not IN_FLIGHT[j.status] and not override then
    return cjson.encode({result = 'duplicate', status = j.status})
  end
  local now = now_ms()
  local extra = {failed_by = '', cancel_reason = status == 'canceled' and 'runner' or ''}
  for i, field in ipairs({'exit_code', 'results', 'stdout', 'stderr'}) do
    local value = args[5 + i]
    extra[field] = value ~= '' and string.sub(value, 2) or false
  end
  if status == 'failed' and not override and retry_left(ns, id) then  -- the command failed
    local after, delay = retry_job(ns, id, name, now, extra.exit_code, args[10])
    return cjson.encode({result = 'recorded', status = after, retry = true, retry_in = delay,
                         retired = retire_if_ephemeral(ns, name, now, false)})
  end
  finalize(ns, id, status, status == 'completed' and '' or args[10], now, extra,
           {status = j.status, attempt = j.attempt, group = {j.group, j.spec, j.qmember}})
  local _, runner = free_runner(ns, name, id, now)
  return cjson.encode({result = 'recorded', status = status, override = override,
                       retired = retire_if_ephemeral(ns, name, now, false, runner)})
end

-- '<job>:<attempt>' -> job id, attempt (text)
local function split_entry(entry)
  local at = string.find(entry, ':[^:]*$')
  if not at then return entry, '' end
  return string.sub(entry, 1, at - 1), string.sub(entry, at + 1)
end

--[[ dispatch_v3_pump
ARGV: ns, max_entries (per box), visibility_ms (outbox), sink_visibility_ms, max_queued, and
      optionally queued: a JSON object {"results": n, "<sink>": n...} of the rq queues' lengths,
      measured by the caller where the rq queues live on another Redis (a sink it does not name
      counts as empty).
Keys: outbox, sinks, and rq:queue:<ns>:results unless `queued` is given; found at run time:
      sinkbox:<sink> of each sink, and rq:queue:<ns>:sink:<sink> unless `queued` is given (read
      for their lengths).
Reply: {"results": [entry...], "sinks": {"<sink>": [entry...]}, "more": bool}
"more": due entries were left behind (a full take, or a box skipped because its rq queue already
holds max_queued batches): the caller pumps again soon.
Invariant: an entry handed out stays in its box, re-scored to now + visibility_ms, so no other
pump hands it out before then; only a writer that recorded it removes it. A batch lost with its
pod or its writer is therefore handed out again after visibility_ms: at least once, never lost.
]]
local function take_due(box, now, max_entries, visibility)
  local due = redis.call('ZRANGEBYSCORE', box, '-inf', now, 'LIMIT', 0, max_entries)
  for first = 1, #due, 1000 do  -- (unpack has a stack limit: ZADD in chunks)
    local args = {'ZADD', box, 'XX'}
    for i = first, math.min(first + 999, #due) do
      args[#args + 1] = now + visibility
      args[#args + 1] = due[i]
    end
    redis.call(unpack(args))
  end
  return due, #due == max_entries
end

local function pump(keys, args)
  local ns, max_entries = args[1], tonumber(args[2])
  local visibility, sink_visibility = tonumber(args[3]), tonumber(args[4])
  local max_queued = tonumber(args[5])
  local queued = nil
  if args[6] and args[6] ~= '' then
    local ok, value = pcall(cjson.decode, args[6])
    if not ok or type(value) ~= 'table' then return fail('invalid queued: a JSON object') end
    queued = value
  end
  -- how many batches wait on an rq queue: measured by the caller, or read here
  local function waiting(name, rq_key)
    if queued then return tonumber(queued[name]) or 0 end
    return redis.call('LLEN', rq_key)
  end
  local now = now_ms()
  local out, more = {results = {}, sinks = {}}, false
  local function box_due(box) return redis.call('ZCOUNT', box, '-inf', now) > 0 end
  if waiting('results', results_rq_queue(ns)) < max_queued then
    local full
    out.results, full = take_due(outbox_key(ns), now, max_entries, visibility)
    more = more or full
  else
    more = more or box_due(outbox_key(ns))
  end
  for _, sink in ipairs(redis.call('SMEMBERS', sinks_key(ns))) do
    if waiting(sink, sink_rq_queue(ns, sink)) < max_queued then
      local due, full = take_due(sinkbox_key(ns, sink), now, max_entries, sink_visibility)
      if #due > 0 then out.sinks[sink] = due end
      more = more or full
    else
      more = more or box_due(sinkbox_key(ns, sink))
    end
  end
  out.more = more
  return cjson.encode(out)
end

-- ---------------------------------------------------------------------------------------------
-- usage metering (part of dispatch_v3_record)
-- ---------------------------------------------------------------------------------------------

-- The UTC civil date of a time in ms since the epoch, as 'YYYY-MM-DD', and the ms that day began
-- (days-to-civil arithmetic from H. Hinnant's "chrono-Compatible Low-Level Date Algorithms";
-- Redis's Lua has no os.date).
local function utc_day(ms)
  local days = math.floor(ms / 86400000)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02d', y, m, d), days * 86400000
end

-- Add a final job's running time (finished - started of its final attempt; 0 when that attempt
-- never started) to `sums`, the usage of this record call: under its spec, group and runner ('' when
-- none) in the hash of the UTC day it finished, and under its spec in the totals; the job counts
-- once. Only a lease-expiry failure can be recorded again (a `completed` of the same attempt may
-- replace it), so only its record keeps what it added (`metered_ms`): the later record adds the
-- difference and no second job.
local function meter_usage(ns, jk, sums)
  local j = redis.call('HMGET', jk, 'spec', 'group', 'runner', 'started', 'finished', 'metered_ms',
                       'status', 'failed_by')
  local finished, started, before = tonumber(j[5]) or now_ms(), tonumber(j[4]), tonumber(j[6])
  local ms = started and math.max(0, finished - started) or 0
  if before == ms then return end
  if j[7] == 'failed' and j[8] == 'lease' then
    redis.call('HSET', jk, 'metered_ms', string.format('%d', ms))
  end
  local day, day_start = utc_day(finished)
  local function add(k, name, start)
    local into = sums[k] or {fields = {}, day_start = start}
    sums[k] = into
    into.fields['ms:' .. name] = (into.fields['ms:' .. name] or 0) + ms - (before or 0)
    if not before then into.fields['jobs:' .. name] = (into.fields['jobs:' .. name] or 0) + 1 end
  end
  for _, by in ipairs({{'spec', j[1]}, {'group', j[2]}, {'runner', j[3]}}) do
    add(usage_key(ns, day), by[1] .. ':' .. (by[2] or ''), day_start)
  end
  add(usage_total_key(ns), 'spec:' .. (j[1] or ''), nil)
end

-- Write the usage summed by meter_usage: one HINCRBY per field, so a batch of jobs of a few specs,
-- groups and runners costs a few dozen commands, not ten per job. Each day's hash lives
-- `retention_days` after its day ends (0 = kept); the totals never expire.
local function flush_usage(sums, retention_days)
  for k, into in pairs(sums) do
    for field, n in pairs(into.fields) do redis.call('HINCRBY', k, field, n) end
    if into.day_start and retention_days > 0 then
      redis.call('EXPIREAT', k, math.floor(into.day_start / 1000) + (retention_days + 1) * 86400)
    end
  end
end

--[[ dispatch_v3_record
ARGV: ns, retention_s (0 = keep records), sinks (JSON list of sink names, [] for none),
      usage_retention_days (0 = keep usage), then one or more entries '<job>:<attempt>' from the
      results outbox
Keys: outbox, job:<id> and log:<id> of each entry, stats, events, sinks, sinkbox:<sink> of each
      sink named, usage:<day> of the UTC days around the caller's clock (yesterday, today,
      tomorrow: where a job that finished moments ago is metered; an entry recorded days late
      meters into its own finish day's hash, found at run time), usage:total; publishes on done.
Reply: JSON list, per entry in order: [status after the call ('' = no such job), changed (bool)]
Invariant: compare-and-set per entry, so a batch run twice (a re-pumped batch, rq retrying a task)
changes nothing the second time: completed -> processed for that attempt (event, counter, done
notice); a failed/canceled attempt gets exactly one `recorded` event; a record that just became
final gets its retention TTL and is appended to every sink's box (same call, so no sink misses an
outcome) and its running time metered once per job (meter_usage); the entry leaves the outbox.
]]
local function record(keys, args)
  local ns, retention = args[1], tonumber(args[2]) or 0
  local ok, sinks = pcall(cjson.decode, args[3] or '[]')
  if not ok or type(sinks) ~= 'table' then return fail('invalid sinks: a JSON list of names') end
  local usage_days = tonumber(args[4])
  if not usage_days or usage_days < 0 or usage_days ~= math.floor(usage_days) then
    return fail('invalid usage retention: whole days >= 0')
  end
  local now = now_ms()
  local out, usage = {}, {}
  for i = 5, #args do
    local entry = args[i]
    local id, attempt = split_entry(entry)
    local jk = job_key(ns, id)
    local j = redis.call('HMGET', jk, 'status', 'attempt', 'recorded_attempt')
    local status, changed = j[1] or '', false
    if j[1] and j[2] == attempt then
      if status == 'completed' then
        redis.call('HSET', jk, 'status', 'processed', 'processed', as_text(now))
        status, changed = 'processed', true
        count(ns, 'processed')
        emit(ns, now, 'processed', id, {attempt = attempt})
        publish_done(ns, id)
      elseif (status == 'failed' or status == 'canceled') and j[3] ~= attempt then
        redis.call('HSET', jk, 'recorded_attempt', attempt)
        changed = true
        emit(ns, now, 'recorded', id, {attempt = attempt, status = status})
      end
      if changed then
        meter_usage(ns, jk, usage)
        if retention > 0 then redis.call('EXPIRE', jk, retention) end
        if retention > 0 then redis.call('EXPIRE', log_key(ns, id), retention) end
        for _, sink in ipairs(sinks) do
          redis.call('ZADD', sinkbox_key(ns, sink), as_text(now), entry)
          redis.call('SADD', sinks_key(ns), sink)
        end
      end
    end
    redis.call('ZREM', outbox_key(ns), entry)
    out[#out + 1] = {status, changed}
  end
  flush_usage(usage, usage_days)
  return cjson.encode(out)
end

--[[ dispatch_v3_tick
ARGV: ns, pod, pod_ttl_ms, max_reap[, deep]
deep: '1' (the default) also reaps dead pods and counts the pump's backlog; '0' leaves both to a
later deep tick (a pod goes deep every few ticks; any pod's deep tick serves the whole namespace).
Reply: {"inbox": [runner...], "reaped": [[job, outcome, attempt]...], "rejoined": bool,
        "backlog": number of outbox and sink box entries due for the pump (deep only),
        "pods": live pods in the pod set (deep only)}
"rejoined" is true when the pod was not in the pod set: it is new, or another pod's tick found it
past its deadline and took it out (and detaches its runners), so the pod must close their sockets
(they reconnect).
Keys: pods, pods:reaping, pod:<pod>:runners, pod:<pod>:inbox, leases, config, outbox, sinks,
      stats, events, delayed, runners (a reaped attempt retires an ephemeral runner); found at run
      time: the jobs and runners the due leases name and what reaping them touches, dead pods'
      runners/inbox, sinkbox:<sink> (counted only), the jobs of due delayed retries and what
      matching them touches.
Invariant: renews this pod's presence; a pod past its deadline leaves the pod set in the deep tick
that finds it, and loses its runners (idle ones go offline; jobs in flight keep their leases), at
most MAX_RUNNERS_REAPED per call, the pods:reaping set holding the rest for the next deep tick; so
a pod still in the pod set has lost nothing. Due leases are reaped by compare-and-set, so any number
of pods may tick at once without a leader; delayed retries that are due (at most max_reap) go to
matching.
]]
-- Dead pods lose their runners, at most MAX_RUNNERS_REAPED runners per call (a pod may have held
-- thousands): a dead pod leaves the pod set at once and stays in pods:reaping until its runner set
-- is empty, so the next deep tick goes on.
local MAX_RUNNERS_REAPED = 500
local function reap_dead_pods(ns, now)
  for _, dead in ipairs(redis.call('ZRANGEBYSCORE', pods_key(ns), '-inf', now, 'LIMIT', 0, 10)) do
    redis.call('ZREM', pods_key(ns), dead)
    redis.call('SADD', reaping_key(ns), dead)
    emit(ns, now, 'pod_lost', '', {pod = dead})
  end
  local budget = MAX_RUNNERS_REAPED
  for _, dead in ipairs(redis.call('SMEMBERS', reaping_key(ns))) do
    if budget <= 0 then return end
    local names = redis.call('SPOP', pod_runners_key(ns, dead), budget)
    budget = budget - #names
    for _, name in ipairs(names) do
      local r = redis.call('HMGET', runner_key(ns, name), 'pod', 'job')
      if r[1] == dead then
        unidle(ns, name)
        local state = (r[2] and r[2] ~= '') and 'busy' or 'offline'
        redis.call('HSET', runner_key(ns, name), 'pod', '', 'state', state)
      end
    end
    if budget > 0 or redis.call('SCARD', pod_runners_key(ns, dead)) == 0 then
      redis.call('DEL', pod_inbox_key(ns, dead))
      redis.call('SREM', reaping_key(ns), dead)
    end
  end
end

-- Entries the pump should move now (outbox and every sink box): 0 costs the pod nothing more.
local function due_backlog(ns, now)
  local n = redis.call('ZCOUNT', outbox_key(ns), '-inf', now)
  for _, sink in ipairs(redis.call('SMEMBERS', sinks_key(ns))) do
    n = n + redis.call('ZCOUNT', sinkbox_key(ns, sink), '-inf', now)
  end
  return n
end

local function tick(keys, args)
  local ns, pod, ttl, max_reap = args[1], args[2], tonumber(args[3]), tonumber(args[4])
  local deep = args[5] ~= '0'
  local now = now_ms()
  -- ZADD answers 1 only for a pod that was not in the set: new, or taken out by a deep tick
  local rejoined = redis.call('ZADD', pods_key(ns), now + ttl, pod) == 1
  if rejoined then redis.call('SREM', reaping_key(ns), pod) end  -- its sockets close: no reaping
  local out = {rejoined = rejoined}
  if deep then reap_dead_pods(ns, now) end
  local reaped = {}
  local due = redis.call('ZRANGEBYSCORE', leases_key(ns), '-inf', now, 'LIMIT', 0, max_reap)
  if #due > 0 then
    local cfg = config(ns)
    for _, id in ipairs(due) do
      local outcome = reap_job(ns, id, now, cfg)
      if outcome then
        table.insert(reaped, {id, outcome, tonumber(redis.call('HGET', job_key(ns, id), 'attempt'))})
      end
    end
  end
  release_due_retries(ns, now, max_reap)
  -- (an empty Lua table encodes as {}; callers treat an empty object as an empty list)
  out.reaped = reaped
  out.inbox = redis.call('SMEMBERS', pod_inbox_key(ns, pod))
  if deep then
    out.backlog = due_backlog(ns, now)
    out.pods = redis.call('ZCARD', pods_key(ns))
  end
  return cjson.encode(out)
end

--[[ dispatch_v3_pod_stop
ARGV: ns, pod
Keys: pods, pods:reaping, pod:<pod>:runners, pod:<pod>:inbox
Reply: 1. Invariant: a pod that shuts down leaves the pod set at once (its runners were detached
one by one before this; jobs in flight keep their leases).
]]
local function pod_stop(keys, args)
  local ns, pod = args[1], args[2]
  redis.call('ZREM', pods_key(ns), pod)
  redis.call('SREM', reaping_key(ns), pod)
  redis.call('DEL', pod_runners_key(ns, pod), pod_inbox_key(ns, pod))
  return 1
end

--[[ dispatch_v3_runner_rotate
ARGV: ns, name, token_sha256_hex (the hash of the runner's new token)
Keys: runner:<name>, events; found at run time: idle:<spec> of its specs, pod:<pod>:runners,
      pod:<pod>:inbox and the pod's bell (when connected)
Reply: 1 when a live connection was told to close, 0 when the runner had none; error when unknown.
Invariant: in this one call the old token stops working (only the new hash is kept) and a live
connection is detached as `dispatch_v3_detach` would, but without a connection generation left in
the record, so the pod holding the socket closes it with 4001 (token revoked); the next attach
starts a new generation. The record, its specs and a job in flight stay: the job keeps its
lease, and the runner, back with the new token, re-attaches to it (PROTOCOL rule 1).
]]
local function runner_rotate(keys, args)
  local ns, name, new_hash = args[1], args[2], args[3]
  local rk = runner_key(ns, name)
  if redis.call('EXISTS', rk) == 0 then return fail('no such runner: ' .. name) end
  if not new_hash or #new_hash ~= 64 or not string.match(new_hash, '^%x+$') then
    return fail('invalid token hash: 64 hex digits of SHA-256')
  end
  local r = redis.call('HMGET', rk, 'pod', 'job')
  redis.call('HSET', rk, 'token_hash', new_hash)
  local closed = 0
  if r[1] and r[1] ~= '' then
    unidle(ns, name)
    local state = (r[2] and r[2] ~= '') and 'busy' or 'offline'
    redis.call('HDEL', rk, 'conn')
    redis.call('HSET', rk, 'pod', '', 'state', state, 'last_seen', as_text(now_ms()))
    redis.call('SREM', pod_runners_key(ns, r[1]), name)
    notify(ns, r[1], name)
    closed = 1
  end
  emit(ns, now_ms(), 'runner_rotated', '', {runner = name})
  return closed
end

-- ---------------------------------------------------------------------------------------------
-- live logs (protocol 1.1 `log`)
-- ---------------------------------------------------------------------------------------------

--[[ dispatch_v3_log_append
ARGV: ns, runner, job, attempt, seq (decimal text, >= 0, no leading zero), stream (stdout|stderr),
      data (at most LOG_DATA_MAX bytes), max_bytes (what the job's log may hold)
Keys: runner:<runner>, job:<job>, log:<job>
Reply: "stored"; "repeat" (seq not above the last one of this attempt: a resend); "dropped" (past
       max_bytes, counted in the note); "stale" (not this runner's current attempt, or the job is
       not claimed/running); "unknown" (no such job). Bad arguments are an error.
Invariant: fenced like heartbeat (PROTOCOL rule 9) but the lease is untouched: only the runner
holding the job's current attempt, while claimed or running, appends; each attempt's chunks are
stored once and in seq order; data plus LOG_ENTRY_COST per chunk stays within max_bytes over
all attempts, and a log that dropped anything ends with one `note` entry counting what was
dropped (moved to the end as more is dropped). The job hash keeps the bookkeeping (log_attempt,
log_seq, log_bytes, log_dropped, log_dropped_chunks, log_note), so it expires with the record.
]]
local LOG_DATA_MAX = 65536
local LOG_ENTRY_COST = 64  -- what a stream entry costs besides its data, roughly
local LOG_FIELDS = {'status', 'runner', 'attempt', 'log_attempt', 'log_seq', 'log_bytes',
                    'log_dropped', 'log_dropped_chunks', 'log_note'}

-- decimal texts without leading zeros, of any length (a seq may exceed a Lua number's precision)
local function seq_above(a, b)
  if not b or b == '' then return true end
  if #a ~= #b then return #a > #b end
  return a > b
end

local function log_refusal(seq, stream, data, max_bytes)
  if not seq or not (seq == '0' or string.match(seq, '^[1-9]%d*$')) then
    return 'invalid seq: a whole number >= 0'
  end
  if stream ~= 'stdout' and stream ~= 'stderr' then return 'invalid stream: stdout or stderr' end
  if not data or #data > LOG_DATA_MAX then return 'invalid data: at most 65536 bytes' end
  if not max_bytes or max_bytes < 0 then return 'invalid max_bytes: a number >= 0' end
  return nil
end

-- a chunk past the limit: count it, and move the note to the end of the log
local function log_drop(ns, id, l, attempt, seq, size, max_bytes)
  local lk, jk = log_key(ns, id), job_key(ns, id)
  local bytes, chunks = (tonumber(l[7]) or 0) + size, (tonumber(l[8]) or 0) + 1
  if l[9] then redis.call('XDEL', lk, l[9]) end
  local text = string.format('[dispatcher: %d bytes in %d chunks dropped: the log is limited to '
                             .. '%d bytes]\n', bytes, chunks, max_bytes)
  local note = redis.call('XADD', lk, '*', 'attempt', attempt, 'seq', seq, 'stream', 'note',
                          'data', text)
  redis.call('HSET', jk, 'log_attempt', attempt, 'log_seq', seq, 'log_dropped', as_text(bytes),
             'log_dropped_chunks', as_text(chunks), 'log_note', note)
  return 'dropped'
end

local function log_append(keys, args)
  local ns, name, id, attempt, seq, stream = args[1], args[2], args[3], args[4], args[5], args[6]
  local data, max_bytes = args[7], tonumber(args[8])
  local refused = log_refusal(seq, stream, data, max_bytes)
  if refused then return fail(refused) end
  if redis.call('EXISTS', runner_key(ns, name)) == 0 then return 'stale' end  -- revoked
  local l = redis.call('HMGET', job_key(ns, id), unpack(LOG_FIELDS))
  if not l[1] then return 'unknown' end
  if l[2] ~= name or l[3] ~= attempt or not IN_FLIGHT[l[1]] then return 'stale' end
  if l[4] == attempt and not seq_above(seq, l[5]) then return 'repeat' end
  local used, cost = tonumber(l[6]) or 0, #data + LOG_ENTRY_COST
  if used + cost > max_bytes then return log_drop(ns, id, l, attempt, seq, #data, max_bytes) end
  redis.call('XADD', log_key(ns, id), '*', 'attempt', attempt, 'seq', seq, 'stream', stream,
             'data', data)
  redis.call('HSET', job_key(ns, id), 'log_attempt', attempt, 'log_seq', seq,
             'log_bytes', as_text(used + cost))
  return 'stored'
end

--[[ dispatch_v3_log_read
ARGV: ns, job, after (a stream id; '0' = from the start), count (most entries returned, 1..10000)
Keys: job:<job>, log:<job>
Reply: {"status": the job's status ('' = no such job), "entries": [[id, attempt, seq, stream,
        data]...]} (entries an empty object when none), oldest first, after `after`.
Invariant: entries and status are read at one moment: once the status is final, no entry is ever
added after the ones returned (appends need a claimed or running attempt), so a reader that
got a final status and fewer than `count` entries has the whole log.
]]
local function log_read(keys, args)
  local ns, id, after, n = args[1], args[2], args[3], tonumber(args[4])
  if not n or n < 1 or n > 10000 then return fail('invalid count: 1..10000') end
  if not after or not string.match(after, '^%d+%-?%d*$') then
    return fail('invalid after: a stream id')
  end
  local status = redis.call('HGET', job_key(ns, id), 'status') or ''
  local entries = {}
  for _, e in ipairs(redis.call('XRANGE', log_key(ns, id), '(' .. after, '+', 'COUNT', n)) do
    local f = {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    entries[#entries + 1] = {e[1], f.attempt, f.seq, f.stream, f.data}
  end
  return cjson.encode({status = status, entries = entries})
end

-- ---------------------------------------------------------------------------------------------
-- concurrency groups and pause (operator functions)
-- ---------------------------------------------------------------------------------------------

--[[ dispatch_v3_group_set
ARGV: ns, group, limit (integer 0..1000000; '' = no limit of its own: the namespace default,
      config `group_default_limit`, else unlimited)
Keys: groups, group:<g>, group:<g>:inflight, group:<g>:specs, group:<g>:heads, config, leases,
      stats, events; found at run time: group:<g>:pending:<spec> and pending:<spec> of the
      specs it waits on, the idle runners given its jobs and their pods' inbox/bell, pods.
Reply: {"group", "limit" (null = unlimited), "inflight", "released": jobs handed to idle runners
        by this call}. Error on a bad name or limit, changing nothing.
Invariant: lowering a limit cancels nothing (jobs in flight finish; no new one goes out until
the group is below it); raising it hands pending jobs to idle runners in this call (at most
MAX_GROUP_FILL; the rest with the next `ready`s).
]]
local function group_set(keys, args)
  local ns, g, limit_text = args[1], args[2], args[3] or ''
  local bad = group_refusal(g)
  if bad then return fail(bad) end
  local limit = tonumber(limit_text)
  if limit_text ~= '' and (not limit or limit < 0 or limit > MAX_GROUP_LIMIT
                           or limit ~= math.floor(limit)) then
    return fail('invalid limit: an integer from 0 to ' .. MAX_GROUP_LIMIT)
  end
  local now = now_ms()
  redis.call('SADD', groups_key(ns), g)
  if limit_text == '' then
    redis.call('HDEL', group_key(ns, g), 'limit')
  else
    redis.call('HSET', group_key(ns, g), 'limit', string.format('%d', limit))
  end
  emit(ns, now, 'group_limit', '', {group = g, limit = limit_text})
  local released = group_fill(ns, g, now, config(ns))
  return cjson.encode({group = g, limit = group_limit(ns, g) or cjson.null, released = released,
                       inflight = redis.call('SCARD', group_inflight_key(ns, g))})
end

-- Resume: a runner whose poll is open (parked) gets the best pending job now, or enters its
-- idle sets. Returns the job id it got, or nil.
local function unpark(ns, name, now)
  local r = redis.call('HMGET', runner_key(ns, name), 'pod', 'polling', 'job', 'conn', 'idle_since')
  if not pod_alive(ns, r[1], now) or r[2] ~= '1' or (r[3] and r[3] ~= '') then return nil end
  local specs = runner_specs(ns, name)
  local id = best_pending(ns, specs)
  if id then
    notify_offer(ns, r[1], name, r[4] or '0', assign(ns, id, name, now, config(ns)))
    return id
  end
  for _, spec in ipairs(specs) do redis.call('ZADD', idle_key(ns, spec), r[5] or now, name) end
  return nil
end

--[[ dispatch_v3_runner_pause
ARGV: ns, name, paused ('1' = pause, '0' = resume)
Keys: runner:<name>, config, leases, stats, events; found at run time: idle:<spec> and
      pending:<spec> of its specs, the job it gets on resume, its pod's inbox/bell, pods.
Reply: {"paused": bool, "changed": bool, "job": id given on resume or null}; error when unknown.
Invariant: a paused runner is in no idle set and `ready` gives it nothing; it stays connected and
keeps (and finishes) a job in flight. A pause takes a waiting runner (long poll or linger) out of
the idle sets in this call, whichever pod holds it; a resume gives a waiting runner the best
pending job in this call (its pod gets the offer on its bell) or puts it back in the idle sets.
]]
local function runner_pause(keys, args)
  local ns, name, flag = args[1], args[2], args[3]
  local rk = runner_key(ns, name)
  if redis.call('EXISTS', rk) == 0 then return fail('no such runner: ' .. name) end
  if flag ~= '1' and flag ~= '0' then return fail('invalid paused: 1 or 0') end
  local now, on = now_ms(), flag == '1'
  local changed = (redis.call('HGET', rk, 'paused') == '1') ~= on
  local job = nil
  if on then
    redis.call('HSET', rk, 'paused', '1')
    for _, spec in ipairs(runner_specs(ns, name)) do  -- (stays `polling`: its poll is open)
      redis.call('ZREM', idle_key(ns, spec), name)
    end
  else
    redis.call('HDEL', rk, 'paused')
    job = unpark(ns, name, now)
  end
  if changed then emit(ns, now, on and 'runner_paused' or 'runner_resumed', '', {runner = name}) end
  return cjson.encode({paused = on, changed = changed, job = job or cjson.null})
end

redis.register_function('dispatch_v3_submit', submit)
redis.register_function('dispatch_v3_cancel', cancel)
redis.register_function('dispatch_v3_runner_add', runner_add)
redis.register_function('dispatch_v3_runner_revoke', runner_revoke)
redis.register_function('dispatch_v3_attach', attach)
redis.register_function('dispatch_v3_detach', detach)
redis.register_function('dispatch_v3_ready', ready)
redis.register_function('dispatch_v3_poll_end', poll_end)
redis.register_function('dispatch_v3_observe', observe)
redis.register_function('dispatch_v3_start', start)
redis.register_function('dispatch_v3_heartbeat', heartbeat)
redis.register_function('dispatch_v3_finish', finish)
redis.register_function('dispatch_v3_pump', pump)
redis.register_function('dispatch_v3_record', record)
redis.register_function('dispatch_v3_tick', tick)
redis.register_function('dispatch_v3_pod_stop', pod_stop)
redis.register_function('dispatch_v3_runner_rotate', runner_rotate)
redis.register_function('dispatch_v3_log_append', log_append)
redis.register_function('dispatch_v3_log_read', log_read)
redis.register_function('dispatch_v3_group_set', group_set)
redis.register_function('dispatch_v3_runner_pause', runner_pause)

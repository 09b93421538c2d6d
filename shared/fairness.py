"""Weighted fair order across API keys, per GPU class: who runs next, decided in Redis.

Each GPU class keeps one FIFO lane of waiting job ids per API key, and starts jobs in
stride-scheduling order across the lanes (weighted fair queueing; deficit round robin
gives the same shares). Every lane has a *pass*, the virtual time of its head job. The next
job to start is the head of the lane with the smallest pass, ties going to the smaller key
id; popping it advances that lane's pass by its *stride*, ``STRIDE_UNIT // weight``. So
while several keys wait, each gets job starts in proportion to its weight, and within a
key the order stays FIFO. A lane that empties keeps its pass; when it fills again it
starts at ``max(its old pass, the pass of the last job started)``: a key that was away
banks no credit, and one that just had its turn cannot jump the queue by leaving.

How this sits on Celery (docs/scaling.md has the trade-offs): a Celery message is a
*turn*, not a job. Submit puts the job in its lane and publishes one turn on its class's
queue; a worker that gets a turn pops the fairest job with ``POP`` below, atomically
claiming it for itself. Turns are interchangeable, so Celery's queue length stays the
backlog (KEDA, Flower), any worker may serve any key (work-conserving), and no process
dispatches: nothing new to run, lease or lose. A turn that finds no job is acked and
forgotten; a job that lacks a turn is what the reaper's reconciler tops up.

Keys (under ``easel:``, spelled by ``shared.jobs.key``):
    lanes:<queue>          sorted set of the keys with waiting jobs, scored by their pass
    lane:<queue>:<owner>   list of an owner's waiting job ids, oldest first
    lanestate:<queue>      hash: ``v`` the pass of the last job started, ``saved:<owner>``
                           the pass an emptied lane resumes from, ``stride:<owner>``;
                           the reaper prunes an emptied lane's once ``v`` passed it
    claims:<queue>         hash of job ids popped but not yet taken, to the worker's name
                           (with their time in ``running:<queue>``): the reaper puts back
                           a claim whose worker died before it took the job
    held:<queue>           sorted set of the jobs popped and not yet started, by when:
                           they start before any job still in a lane

``FIFO_LANE`` is the one lane of every job when fair order is off (``EASEL_FAIR_SHARE``),
the baseline that ``make bench`` compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

STRIDE_UNIT = 1 << 20  # the stride of weight 1; passes stay exact integers for ~2**32 jobs
MAX_WEIGHT = 1000
FIFO_LANE = "*"


def stride(weight: int) -> int:
    """How far a lane's pass moves per job started: inversely proportional to the weight."""
    return STRIDE_UNIT // max(1, min(weight, MAX_WEIGHT))


# KEYS: lanes, the lane, lanestate. ARGV: owner, job id, stride ('' keeps the lane's),
# '1' to put the job at the head of its lane (a job put back), else '0'.
PUSH = """
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
else
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[3], 'stride:' .. ARGV[1], ARGV[3])
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local v = tonumber(redis.call('HGET', KEYS[3], 'v') or '0')
  local saved = tonumber(redis.call('HGET', KEYS[3], 'saved:' .. ARGV[1]) or '0')
  redis.call('ZADD', KEYS[1], math.max(v, saved), ARGV[1])
end
return 1
"""

# KEYS: lanes, lanestate, running, claims, held. ARGV: the lanes' key prefix, now, the
# worker's name, the default stride. The popped id, claimed for that worker; nil if none.
POP = """
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #head == 0 then return false end
  local owner, pass = head[1], tonumber(head[2])
  local lane = ARGV[1] .. owner
  local id = redis.call('LPOP', lane)
  if not id then
    redis.call('ZREM', KEYS[1], owner)
  else
    local step = tonumber(redis.call('HGET', KEYS[2], 'stride:' .. owner) or ARGV[4])
    redis.call('HSET', KEYS[2], 'v', pass)
    if redis.call('LLEN', lane) == 0 then
      redis.call('ZREM', KEYS[1], owner)
      redis.call('HSET', KEYS[2], 'saved:' .. owner, pass + step)
    else
      redis.call('ZADD', KEYS[1], pass + step, owner)
    end
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    redis.call('HSET', KEYS[4], id, ARGV[3])
    redis.call('ZADD', KEYS[5], ARGV[2], id)
    return id
  end
end
"""

# KEYS: lanes, the lane, lanestate. ARGV: owner, job id. Take a waiting job out of its
# lane (canceled, or never accepted); an emptied lane keeps its pass. How many it removed.
REMOVE = """
local removed = redis.call('LREM', KEYS[2], 0, ARGV[2])
if removed > 0 and redis.call('LLEN', KEYS[2]) == 0 then
  local pass = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if pass then
    redis.call('ZREM', KEYS[1], ARGV[1])
    redis.call('HSET', KEYS[3], 'saved:' .. ARGV[1], pass)
  end
end
return removed
"""

# KEYS: lanes, lanestate, held, the job's lane. ARGV: the lanes' key prefix, job id. What
# a position needs, read at one instant: the job's index in its lane (-1 if not there),
# how many jobs are held, and each waiting lane's owner, pass, stride and length.
SNAPSHOT = """
local index = redis.call('LPOS', KEYS[4], ARGV[2])
local out = {index or -1, redis.call('ZCARD', KEYS[3])}
local lanes = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #lanes, 2 do
  local owner = lanes[i]
  table.insert(out, owner)
  table.insert(out, lanes[i + 1])
  table.insert(out, redis.call('HGET', KEYS[2], 'stride:' .. owner) or '')
  table.insert(out, redis.call('LLEN', ARGV[1] .. owner))
end
return out
"""


# KEYS: queued, lanes, claims, running. ARGV: the lanes' key prefix. The waiting jobs that
# are in no lane, not claimed and not held or running: a lane write a failover lost.
UNPLACED = """
local queued = redis.call('ZRANGE', KEYS[1], 0, -1)
if #queued == 0 then return {} end
local placed = {}
for _, owner in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  for _, id in ipairs(redis.call('LRANGE', ARGV[1] .. owner, 0, -1)) do placed[id] = true end
end
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do placed[id] = true end
for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do placed[id] = true end
local out = {}
for _, id in ipairs(queued) do
  if not placed[id] then table.insert(out, id) end
end
return out
"""


# KEYS: lanestate, lanes. Forget what an emptied lane keeps once it can no longer matter:
# its resume point is at or behind the last start, where any lane resumes anyway. Keeps
# the state as small as the keys that used the queue lately. How many lanes it forgot.
PRUNE = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local fields = redis.call('HGETALL', KEYS[1])
local forgot = 0
for i = 1, #fields, 2 do
  local name = fields[i]
  if string.sub(name, 1, 6) == 'saved:' then
    local owner = string.sub(name, 7)
    if tonumber(fields[i + 1]) <= v and not redis.call('ZSCORE', KEYS[2], owner) then
      redis.call('HDEL', KEYS[1], name, 'stride:' .. owner)
      forgot = forgot + 1
    end
  end
end
return forgot
"""


@dataclass(frozen=True)
class Lane:
    """One key's waiting jobs: the pass of its head job, its stride, how many wait."""

    owner: bytes
    pass_: int
    stride: int
    length: int


def started_before(lanes: list[Lane], owner: bytes, index: int) -> int:
    """How many waiting jobs start before the ``index``-th job of ``owner``'s lane, if no
    job arrives meanwhile: exactly the order ``POP`` takes them in.

    That job's tag is its lane's pass plus ``index`` strides. A job of another lane goes
    first if its own tag is smaller, or equal with a smaller owner (the sorted set's order
    for equal scores: bytewise).
    """
    mine = next(lane for lane in lanes if lane.owner == owner)
    tag = mine.pass_ + index * mine.stride
    before = index
    for lane in lanes:
        if lane.owner == owner:
            continue
        # Jobs j of this lane with pass + j * stride < tag (<= when its owner sorts first).
        reach = tag - lane.pass_ if lane.owner < owner else tag - lane.pass_ - 1
        if reach >= 0:
            before += min(lane.length, reach // lane.stride + 1)
    return before


def parse_snapshot(raw: list[bytes | int]) -> tuple[int | None, int, list[Lane]]:
    """``SNAPSHOT``'s answer as (the job's index or None, jobs held, waiting lanes)."""
    index, held = int(raw[0]), int(raw[1])
    lanes = []
    for at in range(2, len(raw), 4):
        owner, pass_, step, length = raw[at : at + 4]
        owner = owner if isinstance(owner, bytes) else str(owner).encode()
        lanes.append(
            Lane(owner, int(float(pass_)), int(step) if step else STRIDE_UNIT, int(length))
        )
    return (None if index < 0 else index), held, lanes

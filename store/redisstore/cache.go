package redisstore

import (
	"hash/maphash"
	"math"
	"sync"
	"time"
)

const (
	// maxCachedRecord is the size of the largest record the local cache
	// keeps; larger ones are read from Redis every time.
	maxCachedRecord = 64 << 10
	// maxCacheShards is how many shards a local cache has at most. Each
	// shard has its own lock.
	maxCacheShards = 16
	// evictionSamples is how many entries of a full shard are looked at to
	// choose the one to drop.
	evictionSamples = 5
	// noDeadline is the deadline of an entry whose record never expires.
	noDeadline = math.MaxInt64
)

// localCache keeps completed records in process, so that a replay of a key
// that this store has seen completed needs no round trip. A completed record
// cannot change until it expires, so an entry needs no invalidation; it only
// has to end no later than the record does in Redis.
//
// Times are nanoseconds on the monotonic clock since the cache was made, so
// that a change of the wall clock cannot make an entry outlive its record.
// It is safe for concurrent use.
type localCache struct {
	seed   maphash.Seed
	epoch  time.Time
	mask   uint64
	shards []cacheShard
}

type cacheShard struct {
	mu      sync.Mutex
	max     int
	entries map[string]*cacheEntry
	// The padding keeps two shards' locks off one cache line.
	_ [40]byte
}

type cacheEntry struct {
	record []byte
	// deadline is when the entry ends, at or before the record's expiry in
	// Redis; noDeadline when the record never expires.
	deadline int64
	// used is when the entry was last put or read, for eviction.
	used int64
}

// newLocalCache returns a cache that holds at most maxEntries records,
// which must be positive.
func newLocalCache(maxEntries int) *localCache {
	// A power of two of shards, no more than there are entries, so that
	// every shard holds at least one.
	n := maxCacheShards
	for n > maxEntries {
		n /= 2
	}
	c := &localCache{
		seed:   maphash.MakeSeed(),
		epoch:  time.Now(),
		mask:   uint64(n - 1),
		shards: make([]cacheShard, n),
	}
	for i := range c.shards {
		// The bounds add up to exactly maxEntries.
		c.shards[i].max = maxEntries / n
		if i < maxEntries%n {
			c.shards[i].max++
		}
		c.shards[i].entries = make(map[string]*cacheEntry)
	}
	return c
}

// now returns the cache's current time.
func (c *localCache) now() int64 {
	return int64(time.Since(c.epoch))
}

func (c *localCache) shard(key string) *cacheShard {
	return &c.shards[maphash.String(c.seed, key)&c.mask]
}

// get returns the record cached for key, if there is one that has not
// ended by now.
func (c *localCache) get(key string, now int64) ([]byte, bool) {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[key]
	if !ok {
		return nil, false
	}
	if now >= e.deadline {
		delete(s.entries, key)
		return nil, false
	}
	e.used = now
	return e.record, true
}

// put caches record for key until deadline. It keeps record as it is: the
// caller must not modify it afterwards. Records larger than maxCachedRecord,
// and those whose deadline has passed, are not cached.
func (c *localCache) put(key string, record []byte, deadline int64) {
	if len(record) > maxCachedRecord {
		return
	}
	now := c.now()
	if now >= deadline {
		return
	}
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.entries[key]; ok {
		// A record cannot change before it expires, so an entry that is
		// still there holds the same bytes; a later answer may only
		// have a slightly different deadline.
		e.record, e.deadline, e.used = record, deadline, now
		return
	}
	if len(s.entries) >= s.max {
		s.evict(now)
	}
	s.entries[key] = &cacheEntry{record: record, deadline: deadline, used: now}
}

// evict drops one entry: of a few taken at random, an ended one if there is
// one, otherwise the least recently used, as Redis approximates LRU.
func (s *cacheShard) evict(now int64) {
	var (
		victim string
		oldest int64 = math.MaxInt64
		seen   int
	)
	// Map iteration starts at a random place, which makes the sample random.
	for key, e := range s.entries {
		if now >= e.deadline {
			victim = key
			break
		}
		if e.used < oldest {
			victim, oldest = key, e.used
		}
		if seen++; seen == evictionSamples {
			break
		}
	}
	delete(s.entries, victim)
}

// size returns the number of entries, ended ones included.
func (c *localCache) size() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}

// deadlineAfter returns the cache time ttl after start, saturating at
// noDeadline; a negative ttl means the record never expires.
func deadlineAfter(start int64, ttl time.Duration) int64 {
	if ttl < 0 || ttl > time.Duration(noDeadline-start) {
		return noDeadline
	}
	return start + int64(ttl)
}

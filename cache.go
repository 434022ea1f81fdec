package idempotency

import (
	"bytes"
	"sync"
)

// decodedCache keeps the decoded form of recently replayed records, so that
// a hot key is not decoded again on every replay. The store is still asked
// on every request, so expiry stays the store's: an entry is only used when
// the store hands back the very bytes it was decoded from.
//
// It is bounded in entries (4096) and in the size of the records it holds
// (8 MiB in all), with their decoded forms beside them. Records over 64 KiB
// are never kept: replays of those, and of records that lost their place,
// decode them again.
type decodedCache struct {
	shards [cacheShards]cacheShard
}

const (
	cacheShards      = 16
	cacheShardMax    = 256       // entries a shard holds at most
	cacheShardBytes  = 512 << 10 // record bytes a shard holds at most
	cacheMaxRecordSz = 64 << 10  // larger records are decoded each time
)

type cacheShard struct {
	mu    sync.Mutex
	m     map[string]cachedRecord
	bytes int // the sum of len(raw) over m
}

type cachedRecord struct {
	raw []byte
	rec *Record
}

func (c *decodedCache) shard(key string) *cacheShard {
	// Storage keys are hashes: any byte of them spreads evenly.
	return &c.shards[key[0]%cacheShards]
}

// get returns the decoded record for key if it was decoded from raw.
func (c *decodedCache) get(key string, raw []byte) *Record {
	s := c.shard(key)
	s.mu.Lock()
	e, ok := s.m[key]
	s.mu.Unlock()
	if ok && bytes.Equal(e.raw, raw) {
		return e.rec
	}
	return nil
}

func (c *decodedCache) put(key string, raw []byte, rec *Record) {
	if len(raw) > cacheMaxRecordSz {
		return
	}
	// A copy: a store may hand out a slice of a larger buffer of its own,
	// which the cache must not keep alive.
	raw = bytes.Clone(raw)
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]cachedRecord)
	}
	if old, ok := s.m[key]; ok {
		s.bytes -= len(old.raw)
		delete(s.m, key)
	}
	for k, e := range s.m {
		if len(s.m) < cacheShardMax && s.bytes+len(raw) <= cacheShardBytes {
			break
		}
		// Map iteration order is random enough to pick whom to drop, and a
		// hot key that loses its place is decoded once more.
		s.bytes -= len(e.raw)
		delete(s.m, k)
	}
	s.m[key] = cachedRecord{raw: raw, rec: rec}
	s.bytes += len(raw)
}

package idempotency

import (
	"bytes"
	"sync"
)

// decodedCache keeps the decoded form of recently replayed records, so that
// a hot key is not decoded again on every replay. The store is still asked
// on every request, so expiry stays the store's: an entry is only used when
// the store hands back the very bytes it was decoded from. It is bounded in
// entries (2048) and in the size of the records it holds (4 KiB each), so at
// most some 8 MiB of records and their decoded form: replays of larger or
// colder records decode them again.
type decodedCache struct {
	shards [cacheShards]cacheShard
}

const (
	cacheShards      = 16
	cacheShardMax    = 256      // entries per shard
	cacheMaxRecordSz = 64 << 10 // larger records are decoded each time
)

type cacheShard struct {
	mu sync.Mutex
	m  map[string]cachedRecord
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
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]cachedRecord)
	}
	if _, ok := s.m[key]; !ok && len(s.m) >= cacheShardMax {
		// Drop an arbitrary entry: map iteration order is random enough,
		// and a hot key that loses its place is decoded once more.
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	// Stores hand out records that stay valid and unchanged (see
	// ClaimResult), so the slice is kept without a copy.
	s.m[key] = cachedRecord{raw: raw, rec: rec}
}

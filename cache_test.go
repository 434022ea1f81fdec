package idempotency

import (
	"bytes"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodedCacheBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		records     int
		size        int
		wantEntries int // at most, in the one shard the keys share
	}{
		{name: "entries", records: 3 * cacheShardMax, size: 100, wantEntries: cacheShardMax},
		{name: "bytes", records: 64, size: 48 << 10, wantEntries: cacheShardBytes / (48 << 10)},
		{name: "too large", records: 4, size: cacheMaxRecordSz + 1, wantEntries: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var c decodedCache
			for i := range tt.records {
				// One first byte: one shard.
				c.put("A"+strconv.Itoa(i), make([]byte, tt.size), &Record{})
			}
			s := c.shard("A")
			assert.LessOrEqual(t, len(s.m), tt.wantEntries)
			assert.LessOrEqual(t, s.bytes, cacheShardBytes)
			sum := 0
			for _, e := range s.m {
				sum += len(e.raw)
			}
			assert.Equal(t, sum, s.bytes, "the byte count")
		})
	}
}

func TestDecodedCacheKeepsItsOwnCopy(t *testing.T) {
	t.Parallel()
	var c decodedCache
	raw := []byte(`{"v":1,"s":201}`)
	rec := &Record{Status: 201}
	c.put("key", raw, rec)
	assert.Same(t, rec, c.get("key", bytes.Clone(raw)), "equal bytes from the store")
	raw[0] = 'x' // the store's buffer changes: the cache must not see it
	assert.Same(t, rec, c.get("key", []byte(`{"v":1,"s":201}`)))
	assert.Nil(t, c.get("key", []byte(`{"v":1,"s":200}`)), "other bytes under the same key")
	c.put("key", []byte(`{"v":1,"s":200}`), &Record{Status: 200})
	require.Len(t, c.shard("key").m, 1)
	assert.Equal(t, len(`{"v":1,"s":200}`), c.shard("key").bytes)
}

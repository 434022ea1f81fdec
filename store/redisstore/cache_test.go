package redisstore

import (
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

func TestLocalCacheBounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		maxEntries int
		wantShards int
	}{
		{name: "one", maxEntries: 1, wantShards: 1},
		{name: "fewer than the shards", maxEntries: 5, wantShards: 4},
		{name: "as many as the shards", maxEntries: 16, wantShards: 16},
		{name: "not a multiple of the shards", maxEntries: 1000, wantShards: 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newLocalCache(tt.maxEntries)
			assert.Len(t, c.shards, tt.wantShards)
			total := 0
			for i := range c.shards {
				assert.Positive(t, c.shards[i].max, "every shard holds at least one entry")
				total += c.shards[i].max
			}
			assert.Equal(t, tt.maxEntries, total, "the shards' bounds add up to maxEntries")

			for i := range 20 * tt.maxEntries {
				c.put("key"+strconv.Itoa(i), []byte("r"), noDeadline)
				require.LessOrEqual(t, c.size(), tt.maxEntries, "after %d puts", i+1)
			}
			assert.Equal(t, tt.maxEntries, c.size(), "a full cache stays full")
			last := "key" + strconv.Itoa(20*tt.maxEntries-1)
			_, ok := c.get(last, c.now())
			assert.True(t, ok, "the entry put last is kept")
		})
	}
}

func TestLocalCacheDeadline(t *testing.T) {
	t.Parallel()
	// Room enough that no entry is evicted.
	c := newLocalCache(1000)
	now := c.now()
	c.put("short", []byte("s"), now+int64(time.Hour))
	c.put("forever", []byte("f"), noDeadline)
	c.put("ended", []byte("e"), now-1)

	tests := []struct {
		name   string
		key    string
		at     int64
		wantOK bool
	}{
		{name: "before its deadline", key: "short", at: now + int64(time.Hour) - 1, wantOK: true},
		{name: "at its deadline", key: "short", at: now + int64(time.Hour)},
		{name: "after its deadline it is gone", key: "short", at: now},
		{name: "no deadline", key: "forever", at: noDeadline - 1, wantOK: true},
		{name: "put after its deadline", key: "ended", at: now},
		{name: "never put", key: "other", at: now},
	}
	// In order: the third row checks that the second removed the entry.
	for _, tt := range tests {
		_, ok := c.get(tt.key, tt.at)
		assert.Equal(t, tt.wantOK, ok, tt.name)
	}
	assert.Equal(t, 1, c.size(), "only the entry without a deadline is left")
}

// TestLocalCacheEviction fills a shard with no more entries than an
// eviction samples, so that the sample is the whole shard: an ended entry
// goes first, then the least recently used.
func TestLocalCacheEviction(t *testing.T) {
	t.Parallel()
	c := newLocalCache(1)
	now := c.now()
	s := &c.shards[0]
	s.entries = map[string]*cacheEntry{
		"ended":  {deadline: now + 1, used: now + 1},
		"old":    {deadline: noDeadline, used: now - 2},
		"recent": {deadline: noDeadline, used: now},
		"older":  {deadline: noDeadline, used: now - 3},
		"fresh":  {deadline: noDeadline, used: now + 1},
	}
	for _, want := range []string{"ended", "older", "old", "recent", "fresh"} {
		require.Contains(t, s.entries, want)
		s.evict(now + 2)
		assert.NotContains(t, s.entries, want, "evicted next")
	}
	assert.Empty(t, s.entries)

	// A read counts as a use.
	c.put("a", []byte("a"), noDeadline)
	s.max = 2
	c.put("b", []byte("b"), noDeadline)
	_, ok := c.get("a", c.now())
	require.True(t, ok)
	c.put("c", []byte("c"), noDeadline)
	assert.Contains(t, s.entries, "a", "read since b was put")
	assert.NotContains(t, s.entries, "b", "the least recently used")
}

func TestLocalCacheLargeRecords(t *testing.T) {
	t.Parallel()
	c := newLocalCache(10)
	c.put("max", make([]byte, maxCachedRecord), noDeadline)
	c.put("over", make([]byte, maxCachedRecord+1), noDeadline)
	_, ok := c.get("max", c.now())
	assert.True(t, ok, "a record of 64 KiB is cached")
	_, ok = c.get("over", c.now())
	assert.False(t, ok, "a record over 64 KiB is not cached")
}

func TestLocalCacheConcurrent(t *testing.T) {
	t.Parallel()
	const (
		maxEntries = 32
		goroutines = 8
		keys       = 100
	)
	c := newLocalCache(maxEntries)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range 2000 {
				key := strconv.Itoa((g*31 + i) % keys)
				if rec, ok := c.get(key, c.now()); ok {
					assert.Equal(t, key, string(rec), "a key's own record")
					continue
				}
				c.put(key, []byte(key), deadlineAfter(c.now(), time.Minute))
			}
		})
	}
	wg.Wait()
	assert.LessOrEqual(t, c.size(), maxEntries)
}

func TestDeadlineAfter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		start int64
		ttl   time.Duration
		want  int64
	}{
		{name: "plain", start: 5, ttl: 10, want: 15},
		{name: "zero", start: 5, ttl: 0, want: 5},
		{name: "never", start: 5, ttl: -1, want: noDeadline},
		{name: "saturates", start: 5, ttl: noDeadline - 4, want: noDeadline},
		{name: "just fits", start: 5, ttl: noDeadline - 6, want: noDeadline - 1},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, deadlineAfter(tt.start, tt.ttl), tt.name)
	}
}

func TestMillis(t *testing.T) {
	t.Parallel()
	maxMillis := int64(MaxTTL / time.Millisecond)
	tests := []struct {
		name string
		d    time.Duration
		want int64
	}{
		{name: "nanosecond rounds up", d: time.Nanosecond, want: 1},
		{name: "whole milliseconds", d: 1500 * time.Millisecond, want: 1500},
		{name: "fraction rounds up", d: 1500*time.Millisecond + 1, want: 1501},
		{name: "just under the cap", d: MaxTTL - time.Millisecond, want: maxMillis - 1},
		{name: "the cap", d: MaxTTL, want: maxMillis},
		{name: "past the cap", d: MaxTTL + 1, want: maxMillis},
		{name: "longest duration", d: math.MaxInt64, want: maxMillis},
		{name: "rounding would overflow", d: math.MaxInt64 - time.Millisecond + 2, want: maxMillis},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, millis(tt.d), tt.name)
	}
	// Redis refuses a TTL whose sum with its clock, in milliseconds since
	// 1970, overflows; the cap leaves that clock millennia.
	assert.Less(t, maxMillis, math.MaxInt64-time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
}

// TestDecodeClaimCompleted checks the completed answer of the claim script,
// which carries the record's time to live for the local cache.
func TestDecodeClaimCompleted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		reply      any
		wantErr    bool
		wantRecord string
		wantTTL    time.Duration
	}{
		{name: "with expiry", reply: []any{int64(3), "drec", int64(1500)}, wantRecord: "rec", wantTTL: 1500 * time.Millisecond},
		{name: "no expiry", reply: []any{int64(3), "drec", int64(-1)}, wantRecord: "rec", wantTTL: -1},
		{name: "expiring now", reply: []any{int64(3), "d", int64(0)}, wantRecord: "", wantTTL: 0},
		{name: "centuries count as never", reply: []any{int64(3), "d", int64(1) << 62}, wantRecord: "", wantTTL: -1},
		{name: "no TTL", reply: []any{int64(3), "drec"}, wantErr: true},
		{name: "missing key's TTL", reply: []any{int64(3), "drec", int64(-2)}, wantErr: true},
		{name: "TTL not a number", reply: []any{int64(3), "drec", "1500"}, wantErr: true},
		{name: "too long", reply: []any{int64(3), "drec", int64(1), int64(1)}, wantErr: true},
		{name: "not a record", reply: []any{int64(3), "xrec", int64(1)}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := decodeClaim(tt.reply)
			if tt.wantErr {
				assert.ErrorIs(t, err, errBadReply)
				assert.Zero(t, res)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, idempotency.StateCompleted, res.State)
			assert.Equal(t, tt.wantRecord, string(res.Record))
			assert.Equal(t, tt.wantTTL, recordTTL(tt.reply))
		})
	}
}

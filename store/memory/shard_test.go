package memory

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// These tests look inside the store: they force keys onto one hash, move
// the store's clock forward instead of sleeping, and check the shards'
// invariants after each step.

// newTestStore returns a store that hashes keys with hash.
func newTestStore(t *testing.T, hash func(key string) uint64, opts ...Option) *Store {
	t.Helper()
	s := New(opts...)
	s.hash = hash
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	return s
}

// advance moves the store's clock forward by d.
func advance(s *Store, d time.Duration) {
	s.base = s.base.Add(-d)
}

// sweepAll sweeps every shard, as claims and a full store do now and then.
func sweepAll(s *Store) int {
	now := s.now()
	freed := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		freed += s.sweep(sh, now)
		sh.mu.Unlock()
	}
	return freed
}

// checkInvariants checks that every shard's index, slots, free list and
// arena agree with each other and with the store's count.
func checkInvariants(t *testing.T, s *Store) {
	t.Helper()
	total := 0
	for si := range s.shards {
		sh := &s.shards[si]
		sh.mu.Lock()
		if len(sh.slots)+len(sh.index)+len(sh.chunks)+sh.garbage == 0 {
			// Never used, or its arena let go after it emptied.
			sh.mu.Unlock()
			continue
		}
		used, liveBytes := 0, 0
		earliest := int64(never)
		keys := make(map[string]bool)
		for i := range sh.slots {
			sl := &sh.slots[i]
			if sl.exp == 0 {
				require.Equal(t, slot{}, *sl, "shard %d: free slot %d is not zeroed", si, i)
				continue
			}
			used++
			earliest = min(earliest, sl.exp)
			liveBytes += int(sl.klen) + int(sl.vlen)
			require.Less(t, int(sl.chunk), len(sh.chunks), "shard %d: slot %d: chunk", si, i)
			require.LessOrEqual(t, int(sl.off+sl.klen+sl.vlen), len(sh.chunks[sl.chunk]), "shard %d: slot %d: entry", si, i)
			key := string(sh.key(sl))
			require.False(t, keys[key], "shard %d: key %q held twice", si, key)
			keys[key] = true
		}
		seen := make(map[int32]bool)
		for h, head := range sh.index {
			require.Equal(t, uint64(si), h%shardCount, "shard %d holds hash %d", si, h)
			for j := head; j != none; j = sh.slots[j].next {
				require.False(t, seen[j], "shard %d: slot %d chained twice", si, j)
				seen[j] = true
				require.NotZero(t, sh.slots[j].exp, "shard %d: free slot %d is chained", si, j)
				require.Equal(t, h, s.hashBytes(sh.key(&sh.slots[j])), "shard %d: slot %d on the wrong chain", si, j)
			}
		}
		require.Len(t, seen, used, "shard %d: slots chained", si)
		freed := make(map[int32]bool)
		for _, i := range sh.free {
			require.False(t, freed[i], "shard %d: slot %d freed twice", si, i)
			freed[i] = true
			require.Zero(t, sh.slots[i].exp, "shard %d: slot %d is used and free", si, i)
		}
		require.Len(t, sh.slots, used+len(sh.free), "shard %d: slots", si)
		inChunks := 0
		for _, c := range sh.chunks {
			inChunks += len(c)
		}
		require.Equal(t, inChunks, sh.used, "shard %d: bytes used", si)
		require.Equal(t, inChunks-liveBytes, sh.garbage, "shard %d: garbage", si)
		require.LessOrEqual(t, liveBytes, s.arenaMax, "shard %d: live bytes", si)
		require.LessOrEqual(t, sh.earliest, earliest, "shard %d: earliest deadline", si)
		total += used
		sh.mu.Unlock()
	}
	require.Equal(t, int64(total), s.count.Load(), "count")
}

// sameHash puts every key on one chain of one shard.
func sameHash(string) uint64 { return 7 }

func TestCollisions(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newTestStore(t, sameHash)
	// Keys of one length, and a key that is a prefix of another, are the
	// likeliest to be mixed up.
	keys := []string{"key-a", "key-b", "key-c", "key-", ""}
	tokens := make(map[string]string)
	for _, key := range keys {
		tokens[key] = "token:" + key
		res, err := s.Claim(ctx, key, tokens[key], time.Hour)
		require.NoError(t, err)
		require.Equal(t, idempotency.StateClaimed, res.State, "claim on %q", key)
	}
	checkInvariants(t, s)
	require.Len(t, s.shards[7].index, 1, "the keys share one chain")

	// Every key is its own token's claim, and no one else's.
	for _, key := range keys {
		for _, other := range keys {
			res, err := s.Claim(ctx, key, tokens[other], time.Hour)
			require.NoError(t, err)
			want := idempotency.StateInFlight
			if other == key {
				want = idempotency.StateClaimed
			}
			assert.Equal(t, want, res.State, "claim on %q with the token of %q", key, other)
			if other != key {
				require.ErrorIs(t, s.Complete(ctx, key, tokens[other], []byte("x"), 0), idempotency.ErrNotHeld)
				require.ErrorIs(t, s.Release(ctx, key, tokens[other]), idempotency.ErrNotHeld)
				require.ErrorIs(t, s.Renew(ctx, key, tokens[other], time.Hour), idempotency.ErrNotHeld)
			}
		}
	}

	// Completing, releasing and renewing one key leaves the others alone,
	// wherever the key is in the chain: "" is its head, key-a its tail.
	require.NoError(t, s.Complete(ctx, "key-b", tokens["key-b"], []byte("record b"), 3*time.Hour))
	require.NoError(t, s.Release(ctx, "", tokens[""]))
	require.NoError(t, s.Release(ctx, "key-a", tokens["key-a"]))
	require.NoError(t, s.Renew(ctx, "key-", tokens["key-"], 2*time.Hour))
	checkInvariants(t, s)
	assertState(t, s, "key-a", idempotency.StateClaimed, nil)
	assertState(t, s, "", idempotency.StateClaimed, nil)
	assertState(t, s, "key-b", idempotency.StateCompleted, []byte("record b"))
	assertState(t, s, "key-c", idempotency.StateInFlight, nil)
	assertState(t, s, "key-", idempotency.StateInFlight, nil)

	// key-c's lease runs out: it is dropped when met, the others stay.
	advance(s, 90*time.Minute)
	assertState(t, s, "key-c", idempotency.StateClaimed, nil)
	checkInvariants(t, s)
	assertState(t, s, "key-", idempotency.StateInFlight, nil)
	assertState(t, s, "key-b", idempotency.StateCompleted, []byte("record b"))

	// A sweep drops the expired entries of the chain, and only them.
	res, err := s.Claim(ctx, "key-a", tokens["key-a"], 10*time.Minute)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State)
	complete(t, s, "", []byte("record"), 10*time.Minute)
	advance(s, time.Hour)
	assert.Equal(t, 3, sweepAll(s), "expired entries swept")
	checkInvariants(t, s)
	assert.Equal(t, int64(1), s.count.Load())
	assertState(t, s, "key-b", idempotency.StateCompleted, []byte("record b"))
	for _, key := range []string{"key-a", "", "key-", "key-c"} {
		assertState(t, s, key, idempotency.StateClaimed, nil)
	}
	checkInvariants(t, s)
}

// assertState checks what a claim on key with a new token answers, and the
// record for [idempotency.StateCompleted]. The claim is released if it
// succeeds, so that the key is left as it was.
func assertState(t *testing.T, s *Store, key string, want idempotency.State, wantRecord []byte) {
	t.Helper()
	res, err := s.Claim(t.Context(), key, "probe", time.Hour)
	require.NoError(t, err)
	assert.Equal(t, want, res.State, "state of %q", key)
	if want == idempotency.StateCompleted {
		assert.Equal(t, wantRecord, res.Record, "record of %q", key)
	}
	if res.State == idempotency.StateClaimed {
		require.NoError(t, s.Release(t.Context(), key, "probe"))
	}
}

// oneShard puts every key into shard 0, each on a chain of its own unless
// their hashes collide by accident.
func oneShard(s *Store) func(string) uint64 {
	return func(key string) uint64 {
		return maphash.String(s.seed, key) * shardCount
	}
}

// kept is a record that Claim returned, and a copy of what it held then.
type kept struct {
	got, want []byte
}

func keep(t *testing.T, s *Store, key string) kept {
	t.Helper()
	res, err := s.Claim(t.Context(), key, "probe", time.Hour)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateCompleted, res.State, "state of %q", key)
	return kept{got: res.Record, want: bytes.Clone(res.Record)}
}

func assertKept(t *testing.T, records []kept) {
	t.Helper()
	for i, r := range records {
		require.Equal(t, r.want, r.got, "record %d changed after it was returned", i)
	}
}

// recordFor is the record of a key, different for every key and long
// enough that the arena needs compacting after a few hundred.
func recordFor(key string) []byte {
	return bytes.Repeat([]byte(key+";"), 1024/(len(key)+1))
}

func TestCompaction(t *testing.T) {
	t.Parallel()
	s := New()
	s.hash = oneShard(s)
	sh := &s.shards[0]

	const n = 400
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%03d", i)
		// One key in ten lasts; the others expire in a minute.
		expiry := time.Minute
		if i%10 == 0 {
			expiry = 0
		}
		complete(t, s, keys[i], recordFor(keys[i]), expiry)
	}
	var records []kept
	for i := 0; i < n; i += 7 {
		records = append(records, keep(t, s, keys[i]))
	}
	// Nothing has expired: the only garbage is the ends of full chunks.
	require.Less(t, sh.garbage, sh.used/20)
	first, size := unsafe.SliceData(sh.chunks[0]), sh.used

	// The next claim sweeps the shard: the expired records turn into
	// garbage, and the arena is compacted into a new one.
	advance(s, 2*time.Minute)
	assertState(t, s, keys[1], idempotency.StateClaimed, nil)
	assert.NotSame(t, first, unsafe.SliceData(sh.chunks[0]), "compaction wrote over the old arena")
	assert.Less(t, sh.used, size/5, "arena after compaction")
	assert.Equal(t, int64(n/10), s.count.Load())
	assertKept(t, records)
	checkInvariants(t, s)

	// The live records are intact, and new ones are stored after them,
	// until they expire too and the arena is compacted again.
	for i := 0; i < n; i += 10 {
		assertState(t, s, keys[i], idempotency.StateCompleted, recordFor(keys[i]))
	}
	for i := range n {
		key := fmt.Sprintf("new-%03d", i)
		complete(t, s, key, recordFor(key), time.Minute)
		records = append(records, keep(t, s, key))
	}
	checkInvariants(t, s)
	first, size = unsafe.SliceData(sh.chunks[0]), sh.used
	advance(s, 2*time.Minute)
	assertState(t, s, "new-000", idempotency.StateClaimed, nil)
	assert.NotSame(t, first, unsafe.SliceData(sh.chunks[0]), "compaction wrote over the old arena")
	assert.Less(t, sh.used, size/5, "arena after compaction")
	checkInvariants(t, s)
	for i := 0; i < n; i += 10 {
		assertState(t, s, keys[i], idempotency.StateCompleted, recordFor(keys[i]))
	}
	assertKept(t, records)
}

func TestCompactionEmptiesArena(t *testing.T) {
	t.Parallel()
	s := New()
	s.hash = oneShard(s)
	sh := &s.shards[0]
	for i := range 100 {
		key := fmt.Sprintf("key-%03d", i)
		complete(t, s, key, recordFor(key), time.Minute)
	}
	records := []kept{keep(t, s, "key-000"), keep(t, s, "key-099")}

	// Once nothing in it lives, the arena is let go.
	advance(s, 2*time.Minute)
	assert.Equal(t, 100, sweepAll(s))
	assert.Nil(t, sh.chunks)
	assert.Zero(t, sh.used)
	assert.Zero(t, sh.garbage)
	assertKept(t, records)
	checkInvariants(t, s)
	complete(t, s, "key-000", []byte("again"), 0)
	assertState(t, s, "key-000", idempotency.StateCompleted, []byte("again"))
	assertKept(t, records)
}

func TestSweep(t *testing.T) {
	t.Parallel()
	// The store's own hash: a sweep hashes keys from the arena's bytes,
	// which must give the hash their strings were given.
	s := New()
	for i := range 1000 {
		key := fmt.Sprintf("key-%04d", i)
		if i%2 == 0 {
			complete(t, s, key, []byte(key), time.Minute)
			continue
		}
		res, err := s.Claim(t.Context(), key, "token", time.Hour)
		require.NoError(t, err)
		require.Equal(t, idempotency.StateClaimed, res.State)
	}
	advance(s, 2*time.Minute)
	assert.Equal(t, 500, sweepAll(s))
	assert.Equal(t, int64(500), s.count.Load())
	checkInvariants(t, s)
	assertState(t, s, "key-0000", idempotency.StateClaimed, nil)
	assertState(t, s, "key-0001", idempotency.StateInFlight, nil)
}

// TestFullOfExpiredConcurrent checks SPEC §8.2: a store full of expired
// entries refuses none of many concurrent claims while an expired entry
// could make room for it, and refuses a claim once it is full of live ones.
// The claims race for room in many rounds, each on a store filled anew.
//
// Not parallel: it raises GOMAXPROCS, so that the claims race on more
// threads than a small machine has cores and are preempted anywhere, as on
// a busy server; no parallel test runs meanwhile.
func TestFullOfExpiredConcurrent(t *testing.T) { //nolint:tparallel // not parallel while it raises GOMAXPROCS
	procs := runtime.GOMAXPROCS(max(8, runtime.GOMAXPROCS(0)))
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })
	const rounds = 20
	tests := []struct {
		name       string
		maxRecords int
		workers    int
		// records fills the store with completed records, not claims.
		records bool
		// apart puts the new keys in a shard of their own.
		apart bool
	}{
		{name: "claims", maxRecords: 512, workers: 64},
		{name: "records", maxRecords: 512, workers: 64, records: true},
		{name: "fewer entries than workers", maxRecords: 16, workers: 64},
		{name: "new keys apart", maxRecords: 512, workers: 64, apart: true},
		{name: "new keys apart, an expired entry per shard", maxRecords: shardCount - 1, workers: 64, apart: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(WithMaxRecords(tt.maxRecords))
			if tt.apart {
				s.hash = newKeysApart(s)
			}
			ctx := t.Context()
			for round := range rounds {
				// Empty the store, fill it, and let every entry expire.
				advance(s, 2*time.Minute)
				sweepAll(s)
				require.Zero(t, s.count.Load())
				for i := range tt.maxRecords {
					key := fmt.Sprintf("old-%d-%d", round, i)
					if tt.records {
						complete(t, s, key, []byte(key), time.Minute)
						continue
					}
					res, err := s.Claim(ctx, key, "token", time.Minute)
					require.NoError(t, err)
					require.Equal(t, idempotency.StateClaimed, res.State)
				}
				advance(s, 2*time.Minute)

				var (
					claimed atomic.Int64
					wg      sync.WaitGroup
				)
				start := make(chan struct{})
				for w := range tt.workers {
					wg.Go(func() {
						<-start
						for i := w; i < tt.maxRecords; i += tt.workers {
							res, err := s.Claim(ctx, fmt.Sprintf("new-%d-%d", round, i), "token", time.Minute)
							if assert.NoError(t, err, "round %d: claim %d of %d, in a store full of expired entries", round, i, tt.maxRecords) &&
								assert.Equal(t, idempotency.StateClaimed, res.State) {
								claimed.Add(1)
							}
						}
					})
				}
				close(start)
				wg.Wait()
				require.Equal(t, int64(tt.maxRecords), claimed.Load(), "round %d: claims accepted", round)
				checkInvariants(t, s)

				// Full of live claims now: a claim is refused, and nothing
				// live was dropped to make room.
				_, err := s.Claim(ctx, "one too many", "token", time.Minute)
				require.ErrorIs(t, err, ErrFull, "round %d", round)
				for i := range tt.maxRecords {
					assertState(t, s, fmt.Sprintf("new-%d-%d", round, i), idempotency.StateInFlight, nil)
				}
			}
		})
	}
}

// newKeysApart puts the keys that begin with "new-" in the last shard, and
// every other key in the others: claims of new keys then find no expired
// entry in their own shard, and only the search for room can free one.
func newKeysApart(s *Store) func(string) uint64 {
	return func(key string) uint64 {
		h := maphash.String(s.seed, key)
		if strings.HasPrefix(key, "new-") {
			return h | (shardCount - 1)
		}
		return h&^(shardCount-1) | h%(shardCount-1)
	}
}

func TestWaitOnCollidingKeys(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := newTestStore(t, sameHash)
	sh := &s.shards[7]
	complete(t, s, "done", []byte("record"), 0)
	claimed := func(key string) {
		res, err := s.Claim(ctx, key, "token", time.Hour)
		require.NoError(t, err)
		require.Equal(t, idempotency.StateClaimed, res.State)
	}
	claimed("a")
	claimed("b")
	waited := make(chan error, 1)
	go func() { waited <- s.Wait(ctx, "a") }()
	require.Eventually(t, func() bool {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		return sh.waits["a"] != nil
	}, 5*time.Second, time.Millisecond, "Wait did not start waiting")

	// A key on the same chain does not wake a's waiter.
	assert.NoError(t, s.Wait(ctx, "done"), "wait on a completed key")
	require.NoError(t, s.Complete(ctx, "b", "token", []byte("b"), 0))
	sh.mu.Lock()
	assert.NotNil(t, sh.waits["a"], "completing b woke a's waiter")
	sh.mu.Unlock()

	// A sweep that finds a's lease run out wakes it.
	advance(s, 2*time.Hour)
	assert.Equal(t, 1, sweepAll(s))
	select {
	case err := <-waited:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the sweep did not wake the waiter")
	}
	checkInvariants(t, s)
}

// complete claims key, which must be claimable, and completes it with rec.
func complete(t *testing.T, s *Store, key string, rec []byte, expiry time.Duration) {
	t.Helper()
	res, err := s.Claim(t.Context(), key, "token", time.Hour)
	require.NoError(t, err)
	require.Equal(t, idempotency.StateClaimed, res.State, "claim on %q", key)
	require.NoError(t, s.Complete(t.Context(), key, "token", rec, expiry))
}

func TestRecordStaysUnchanged(t *testing.T) {
	t.Parallel()
	s := New()
	s.hash = oneShard(s)
	sh := &s.shards[0]

	// The caller's buffer is copied: reusing it changes nothing.
	buf := []byte("first record")
	complete(t, s, "first", buf, 0)
	copy(buf, "XXXXX")
	first := keep(t, s, "first")
	require.Equal(t, "first record", string(first.want))

	// An empty record is not nil.
	complete(t, s, "empty", nil, 0)
	res, err := s.Claim(t.Context(), "empty", "other", time.Hour)
	require.NoError(t, err)
	assert.NotNil(t, res.Record)
	assert.Empty(t, res.Record)

	// A record has no room to append to in place.
	assert.Equal(t, len(first.got), cap(first.got), "capacity of a record")

	// Later writes, growth and compaction leave it as it is.
	records := []kept{first}
	grown, compacted := false, false
	for i := range 500 {
		key := fmt.Sprintf("key-%03d", i)
		chunks, used := len(sh.chunks), sh.used
		complete(t, s, key, recordFor(key), time.Minute)
		records = append(records, keep(t, s, key))
		if i%50 == 49 {
			// Lets the last records expire, to be compacted away.
			advance(s, 2*time.Minute)
			sweepAll(s)
		}
		grown = grown || len(sh.chunks) > chunks
		compacted = compacted || sh.used < used
		assertKept(t, records)
	}
	assert.True(t, grown, "the arena never grew")
	assert.True(t, compacted, "the arena was never compacted")
	assertState(t, s, "first", idempotency.StateCompleted, []byte("first record"))
	checkInvariants(t, s)
}

func TestArenaCopiesInSteadyState(t *testing.T) {
	t.Parallel()
	s := New()
	s.hash = oneShard(s)
	sh := &s.shards[0]

	// Records expire as fast as new ones come, so that about live of
	// them are held at any time. Growing copies nothing; each compaction
	// copies the live bytes.
	const live = 200
	rec := make([]byte, 1024)
	written, copied, held := 0, 0, 0
	for i := range 40 * live {
		first := (*byte)(nil)
		if len(sh.chunks) > 0 {
			first = unsafe.SliceData(sh.chunks[0])
		}
		key := fmt.Sprintf("key-%06d", i)
		complete(t, s, key, rec, live*time.Minute)
		advance(s, time.Minute)
		if i < 10*live {
			continue
		}
		written += len(key) + len(rec)
		if first != nil && unsafe.SliceData(sh.chunks[0]) != first {
			copied += sh.used
		}
		held = max(held, sh.used-sh.garbage)
	}
	checkInvariants(t, s)
	assert.LessOrEqual(t, copied, 2*written, "bytes copied for %d bytes written", written)
	capacity := 0
	for _, c := range sh.chunks {
		capacity += cap(c)
	}
	assert.LessOrEqual(t, capacity, 3*held+maxChunk, "arena capacity for its live bytes")
}

func TestArenaLimit(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := New()
	s.hash = oneShard(s)
	s.arenaMax = 1000
	sh := &s.shards[0]

	claimKey := func(key string) error {
		_, err := s.Claim(ctx, key, "token", time.Hour)
		return err
	}
	require.NoError(t, claimKey("a"))
	// A key that does not fit is refused, and takes no room.
	err := claimKey(string(make([]byte, 1000)))
	require.ErrorIs(t, err, ErrFull)
	assert.Contains(t, err.Error(), "1000 bytes")
	assert.Equal(t, int64(1), s.count.Load())

	// A record that does not fit is refused, and the claim stays.
	err = s.Complete(ctx, "a", "token", make([]byte, 1000), 0)
	require.ErrorIs(t, err, ErrFull)
	assertState(t, s, "a", idempotency.StateInFlight, nil)

	// A completed record's entry is its key and the record, written anew
	// unless the claim was the last entry; the claim's entry, its key and
	// its token, "token", then turns into garbage. A record that takes the
	// live bytes to the limit fits; a byte more does not.
	complete(t, s, "b", make([]byte, 500), time.Minute)
	roomA := 1000 - (sh.used - sh.garbage) - len("a")
	require.ErrorIs(t, s.Complete(ctx, "a", "token", make([]byte, roomA+1), 0), ErrFull)
	require.NoError(t, s.Complete(ctx, "a", "token", make([]byte, roomA), 0))
	assert.Equal(t, 1000-len("atoken"), sh.used-sh.garbage, "live bytes")
	records := []kept{keep(t, s, "a"), keep(t, s, "b")}
	require.NoError(t, claimKey("c"))
	require.ErrorIs(t, claimKey("d"), ErrFull)

	// Expired records make room.
	advance(s, 2*time.Minute)
	require.NoError(t, claimKey("d"))
	assertState(t, s, "a", idempotency.StateCompleted, make([]byte, roomA))
	assertKept(t, records)
	checkInvariants(t, s)

	// And for a record too.
	// e's record is written after its key while its claim still counts.
	complete(t, s, "e", make([]byte, 1000-(sh.used-sh.garbage)-len("etoken")-len("e")), time.Minute)
	room := 1000 - (sh.used - sh.garbage) - len("c")
	require.ErrorIs(t, s.Complete(ctx, "c", "token", make([]byte, room+1), 0), ErrFull)
	advance(s, 2*time.Minute)
	require.NoError(t, s.Complete(ctx, "c", "token", make([]byte, room+1), 0))
	assertState(t, s, "c", idempotency.StateCompleted, make([]byte, room+1))
	assertState(t, s, "a", idempotency.StateCompleted, make([]byte, roomA))
	checkInvariants(t, s)
}

func TestNoAllocations(t *testing.T) {
	// Not parallel: other tests' allocations would be counted.
	s := New()
	ctx := t.Context()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%04d", i)
	}
	rec := []byte("record")
	claimAndEnd := func(i int) {
		key := keys[i%len(keys)]
		if _, err := s.Claim(ctx, key, "token", time.Hour); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := s.Release(ctx, key, "token"); err != nil {
				t.Fatal(err)
			}
			return
		}
		if err := s.Complete(ctx, key, "token", rec, time.Nanosecond); err != nil {
			t.Fatal(err)
		}
	}
	// Lets the slices, maps and arenas reach their steady size first.
	for i := range 100 * len(keys) {
		claimAndEnd(i)
	}
	i := 0
	allocs := testing.AllocsPerRun(10*len(keys), func() {
		claimAndEnd(i)
		i++
	})
	assert.Zero(t, allocs, "allocations of a claim and its end")

	complete(t, s, "done", rec, 0)
	allocs = testing.AllocsPerRun(1000, func() {
		res, err := s.Claim(ctx, "done", "other", time.Hour)
		if err != nil || res.State != idempotency.StateCompleted {
			t.Fatal(res.State, err)
		}
	})
	assert.Zero(t, allocs, "allocations of a claim on a completed record")
}

// TestModel runs random operations on a few keys that collide, with
// records large enough to make the arena grow and be compacted, and checks
// every answer against a plain map, and the store's invariants after each
// step.
func TestModel(t *testing.T) {
	t.Parallel()
	hashes := []struct {
		name string
		hash func(string) uint64
	}{
		// All keys on one chain.
		{name: "one chain", hash: sameHash},
		// Two chains in one shard, and a third shard.
		{name: "three chains", hash: func(key string) uint64 { return uint64(len(key)%3) * 32 }},
	}
	for _, tt := range hashes {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runModel(t, tt.hash, rand.New(rand.NewPCG(1, uint64(len(tt.name)))))
		})
	}
}

type modelEntry struct {
	token string
	rec   []byte
	exp   time.Duration // on the model's clock
	done  bool
}

func runModel(t *testing.T, hash func(string) uint64, rng *rand.Rand) {
	t.Helper()
	ctx := t.Context()
	const maxRecords = 6
	s := newTestStore(t, hash, WithMaxRecords(maxRecords))
	keys := []string{"", "a", "bb", "ccc", "dddd", "e", "ff", "ggg"}
	tokens := []string{"t1", "t2", "t3"}
	// The model's clock moves in minutes, so that the real time the test
	// takes never moves a deadline across a step.
	const unit = time.Minute
	var (
		now     time.Duration
		model   = make(map[string]*modelEntry)
		records []kept
	)
	live := func(key string) *modelEntry {
		e := model[key]
		if e != nil && now >= e.exp {
			delete(model, key)
			return nil
		}
		return e
	}
	held := func(key, token string) *modelEntry {
		if e := live(key); e != nil && !e.done && e.token == token {
			return e
		}
		return nil
	}
	ttl := func() time.Duration { return time.Duration(1+rng.IntN(3)) * unit }
	const steps = 3000
	for step := range steps {
		key := keys[rng.IntN(len(keys))]
		token := tokens[rng.IntN(len(tokens))]
		switch op := rng.IntN(10); op {
		case 0, 1, 2:
			lease := ttl()
			res, err := s.Claim(ctx, key, token, lease)
			e := live(key)
			switch {
			case e == nil:
				unexpired := 0
				for k := range model {
					if live(k) != nil {
						unexpired++
					}
				}
				if unexpired >= maxRecords {
					require.ErrorIs(t, err, ErrFull, "step %d: claim on %q in a full store", step, key)
					break
				}
				require.NoError(t, err, "step %d", step)
				require.Equal(t, idempotency.StateClaimed, res.State, "step %d: claim on free %q", step, key)
				model[key] = &modelEntry{token: token, exp: now + lease}
			case e.done:
				require.NoError(t, err, "step %d", step)
				require.Equal(t, idempotency.StateCompleted, res.State, "step %d: claim on completed %q", step, key)
				require.Equal(t, e.rec, res.Record, "step %d: record of %q", step, key)
				records = append(records, kept{got: res.Record, want: bytes.Clone(res.Record)})
			case e.token == token:
				require.NoError(t, err, "step %d", step)
				require.Equal(t, idempotency.StateClaimed, res.State, "step %d: claim again on %q", step, key)
			default:
				require.NoError(t, err, "step %d", step)
				require.Equal(t, idempotency.StateInFlight, res.State, "step %d: claim on claimed %q", step, key)
				left := e.exp - now
				require.LessOrEqual(t, res.LeaseLeft, left, "step %d: lease left", step)
				require.Greater(t, res.LeaseLeft, left-unit/2, "step %d: lease left", step)
			}
		case 3, 4:
			// Different for every step, to tell records apart.
			rec := bytes.Repeat(fmt.Appendf(nil, "%d;", step), rng.IntN(4000))
			expiry := time.Duration(rng.IntN(3)) * unit
			err := s.Complete(ctx, key, token, rec, expiry)
			e := held(key, token)
			if e == nil {
				require.ErrorIs(t, err, idempotency.ErrNotHeld, "step %d: complete %q", step, key)
				break
			}
			require.NoError(t, err, "step %d: complete %q", step, key)
			e.done, e.token, e.rec, e.exp = true, "", bytes.Clone(rec), now+expiry
			if expiry == 0 {
				e.exp = never
			}
			// The store copied the buffer.
			clear(rec)
		case 5:
			err := s.Release(ctx, key, token)
			if held(key, token) == nil {
				require.ErrorIs(t, err, idempotency.ErrNotHeld, "step %d: release %q", step, key)
				break
			}
			require.NoError(t, err, "step %d: release %q", step, key)
			delete(model, key)
		case 6:
			lease := ttl()
			err := s.Renew(ctx, key, token, lease)
			e := held(key, token)
			if e == nil {
				require.ErrorIs(t, err, idempotency.ErrNotHeld, "step %d: renew %q", step, key)
				break
			}
			require.NoError(t, err, "step %d: renew %q", step, key)
			e.exp = now + lease
		case 7, 8:
			d := time.Duration(rng.IntN(2)) * unit
			now += d
			advance(s, d)
		case 9:
			sweepAll(s)
		}
		checkInvariants(t, s)
		if step%100 == 0 || step == steps-1 {
			assertKept(t, records)
		}
	}
}

package memory

import (
	"math"
	"sync"
	"unsafe"
)

const (
	// maxArena bounds the live bytes of a shard's keys and values: an
	// entry's lengths and offsets are uint32s.
	maxArena = min(math.MaxUint32, math.MaxInt)

	// compactMin is the garbage a shard's arena holds at least before it is
	// compacted: below it, copying the live bytes would cost more than the
	// memory it returns.
	compactMin = 64 << 10

	// minChunk and maxChunk bound the capacity of the arena's chunks: the
	// first chunk of a shard is small, each next one twice the last, up to
	// maxChunk. An entry larger than that has a chunk of its own.
	minChunk = 1 << 10
	maxChunk = 64 << 10

	// none ends a chain of slots and marks a slot absent.
	none = -1
)

type shard struct {
	shardState
	// Padding keeps two shards' locks off one cache line, so that cores
	// working on different shards do not slow each other down.
	_ [(128 - unsafe.Sizeof(shardState{})%128) % 128]byte
}

// shardState holds a shard's claims and records in memory that the garbage
// collector does not scan: the index, the slots and the arena hold no
// pointers, so however many records a shard keeps, a collection marks a
// handful of objects for them and never looks inside.
type shardState struct {
	mu sync.Mutex
	// index maps the hash of a key to the first slot of the chain of slots
	// whose keys have that hash. Two keys share a hash only by accident, so
	// nearly every chain is one slot long.
	index map[uint64]int32
	// slots holds the claims and records; a free slot has exp zero. The
	// indices of free slots are in free, to be reused first.
	slots []slot
	free  []int32
	// chunks hold the arena: the keys and values of all slots. An entry,
	// its key followed by its value, lies in one chunk; new entries are
	// appended to the last chunk, or to a new one when it is full, so that
	// growing never copies what is there. Record bytes once written are
	// never modified, as [Store.Claim] hands out records as slices of a
	// chunk: a compaction moves the live entries to new chunks, and an old
	// one lives on as long as someone holds such a slice.
	chunks [][]byte
	// used is the sum of the chunks' lengths: live bytes and garbage.
	used int
	// garbage counts the bytes of the chunks that no slot refers to
	// anymore.
	garbage int
	// waits holds a channel for each in-flight key that someone waits on;
	// it is closed when the claim ends. Created on first use: most stores
	// never see a waiter.
	waits map[string]chan struct{}
	// earliest is at most the earliest deadline of the shard's entries:
	// before it, a sweep would find nothing.
	earliest int64
	// swept is when the shard was last swept.
	swept int64
}

// slot is a claim or a completed record. It is kept small, as a store holds
// many of them, and holds no pointer, so that the collector does not scan
// the slots.
type slot struct {
	// exp is when the lease or the record ends, in nanoseconds of the
	// store's clock, or never. Deadlines are positive, since leases and
	// expiries are, so zero marks a free slot.
	exp int64
	// The entry lies in chunks[chunk] from off: klen bytes of key, then
	// vlen bytes of value, a claim's token or a completed record's bytes.
	chunk, off uint32
	klen, vlen uint32
	// next is the next slot whose key has the same hash, or none.
	next int32
	done bool // a completed record, not a claim
}

// key returns the bytes of sl's key, which must not be modified.
func (sh *shard) key(sl *slot) []byte {
	return sh.chunks[sl.chunk][sl.off : sl.off+sl.klen]
}

// value returns the bytes of sl's value, with no room to append to in
// place.
func (sh *shard) value(sl *slot) []byte {
	start := sl.off + sl.klen
	end := start + sl.vlen
	return sh.chunks[sl.chunk][start:end:end]
}

// holdsToken reports whether sl, a claim, is token's.
func (sh *shard) holdsToken(sl *slot, token string) bool {
	// The conversion compares in place: it copies nothing.
	return string(sh.value(sl)) == token
}

// record returns a completed record's bytes without copying them. Callers
// of [Store.Claim] must not modify a record, and the store never writes
// over it, so sharing is safe.
func (sh *shard) record(sl *slot) []byte {
	if sl.vlen == 0 {
		return []byte{}
	}
	return sh.value(sl)
}

// find returns the slot holding key, whose hash is h, and the slot before
// it in its chain, or none for either. It does not look at deadlines. The
// shard must be locked.
func (sh *shard) find(h uint64, key string) (i, prev int32) {
	i, ok := sh.index[h]
	if !ok {
		return none, none
	}
	prev = none
	for i != none {
		sl := &sh.slots[i]
		// The conversion compares in place: it copies nothing.
		if string(sh.key(sl)) == key {
			return i, prev
		}
		prev, i = i, sl.next
	}
	return none, none
}

// prevOf returns the slot before slot i in the chain of hash h, or none if
// i is first. The shard must be locked.
func (sh *shard) prevOf(h uint64, i int32) int32 {
	prev := int32(none)
	for j := sh.index[h]; j != i; j = sh.slots[j].next {
		prev = j
	}
	return prev
}

// insert adds a claim on key, whose hash is h and which the shard does not
// hold, for token until exp. It reports false, and changes nothing, when
// the arena has no room for the key under limit or the slots have run out.
// The shard must be locked.
func (sh *shard) insert(h uint64, key, token string, exp int64, limit int) bool {
	if len(sh.free) == 0 && len(sh.slots) >= math.MaxInt32 {
		return false
	}
	c, off, ok := sh.alloc(len(key)+len(token), limit)
	if !ok {
		return false
	}
	b := sh.chunks[c][off:]
	copy(b, key)
	copy(b[len(key):], token)
	var i int32
	if n := len(sh.free); n > 0 {
		i = sh.free[n-1]
		sh.free = sh.free[:n-1]
	} else {
		i = int32(len(sh.slots))
		sh.slots = append(sh.slots, slot{})
	}
	next := int32(none)
	if head, ok := sh.index[h]; ok {
		next = head
	}
	sh.slots[i] = slot{
		exp: exp, next: next,
		chunk: uint32(c), off: uint32(off),
		klen: uint32(len(key)), vlen: uint32(len(token)),
	}
	sh.index[h] = i
	sh.earliest = min(sh.earliest, exp)
	return true
}

// complete turns claim i into a completed record of a copy of rec, until
// exp. It reports false, and changes nothing, when the arena has no room
// for rec under limit. The shard must be locked.
func (sh *shard) complete(i int32, rec []byte, exp int64, limit int) bool {
	sl := &sh.slots[i]
	last := len(sh.chunks) - 1
	if c := sh.chunks[last]; int(sl.chunk) == last && int(sl.off+sl.klen+sl.vlen) == len(c) &&
		len(rec) <= cap(c)-int(sl.off+sl.klen) && len(rec)-int(sl.vlen) <= limit-(sh.used-sh.garbage) {
		// The claim is the last entry written: the record takes the place
		// of its token, which no caller has ever seen, after its key.
		start := int(sl.off + sl.klen)
		sh.chunks[last] = append(c[:start], rec...)
		sh.used += len(rec) - int(sl.vlen)
	} else {
		n := int(sl.klen) + len(rec)
		c, off, ok := sh.alloc(n, limit)
		if !ok {
			return false
		}
		b := sh.chunks[c][off : off+n]
		copy(b, sh.key(sl))
		copy(b[sl.klen:], rec)
		sh.garbage += int(sl.klen + sl.vlen) // the claim's entry
		sl.chunk, sl.off = uint32(c), uint32(off)
	}
	sl.vlen = uint32(len(rec))
	sl.exp = exp
	sl.done = true
	sh.earliest = min(sh.earliest, exp)
	return true
}

// drop frees slot i, whose key has hash h and which follows prev in its
// chain. Its bytes stay in the arena as garbage until a compaction. The
// shard must be locked.
func (sh *shard) drop(h uint64, i, prev int32) {
	sl := &sh.slots[i]
	switch {
	case prev != none:
		sh.slots[prev].next = sl.next
	case sl.next != none:
		sh.index[h] = sl.next
	default:
		delete(sh.index, h)
	}
	sh.garbage += int(sl.klen) + int(sl.vlen)
	*sl = slot{}
	sh.free = append(sh.free, i)
}

// alloc appends n bytes to the arena, to be written once, and returns the
// chunk and the offset where they start. It reports false, and changes
// nothing, when the live bytes would exceed limit. The shard must be
// locked.
func (sh *shard) alloc(n, limit int) (c, off int, ok bool) {
	if n > limit-(sh.used-sh.garbage) {
		return 0, 0, false
	}
	last := len(sh.chunks) - 1
	if last >= 0 {
		b := sh.chunks[last]
		if n <= cap(b)-len(b) {
			sh.chunks[last] = b[:len(b)+n]
			sh.used += n
			return last, len(b), true
		}
		// The rest of a full chunk is never written: it counts as
		// garbage, so that a compaction sees it.
		rest := cap(b) - len(b)
		sh.chunks[last] = b[:cap(b)]
		sh.used += rest
		sh.garbage += rest
	}
	size := minChunk
	if last >= 0 {
		size = min(2*cap(sh.chunks[last]), maxChunk)
	}
	sh.chunks = append(sh.chunks, make([]byte, n, max(size, n)))
	sh.used += n
	return len(sh.chunks) - 1, 0, true
}

// compact moves the live entries to new chunks, once the garbage outweighs
// them. Its cost, a copy of the live bytes, is paid for by the garbage
// written since the last compaction. The shard must be locked.
func (sh *shard) compact() {
	if sh.garbage < compactMin || sh.garbage <= sh.used-sh.garbage {
		return
	}
	old := sh.chunks
	live := sh.used - sh.garbage
	sh.chunks, sh.used, sh.garbage = nil, 0, 0
	if live == 0 {
		return
	}
	// The first chunk takes all the live bytes, if a chunk can.
	sh.chunks = append(sh.chunks, make([]byte, 0, max(minChunk, min(live, maxChunk))))
	for i := range sh.slots {
		sl := &sh.slots[i]
		if sl.exp == 0 {
			continue
		}
		n := int(sl.klen + sl.vlen)
		c, off, _ := sh.alloc(n, math.MaxInt)
		copy(sh.chunks[c][off:], old[sl.chunk][sl.off:int(sl.off)+n])
		sl.chunk, sl.off = uint32(c), uint32(off)
	}
}

// wake wakes whoever waits on key's claim, which has ended. The shard must
// be locked.
func (sh *shard) wake(key string) {
	if len(sh.waits) == 0 {
		return
	}
	if ch, ok := sh.waits[key]; ok {
		close(ch)
		delete(sh.waits, key)
	}
}

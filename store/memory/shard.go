package memory

import (
	"math"
	"sync"
	"unsafe"
)

const (
	// maxArena bounds a shard's arena, whose offsets are uint32s.
	maxArena = min(math.MaxUint32, math.MaxInt)

	// compactMin is the garbage a shard's arena holds at least before it is
	// compacted: below it, copying the live bytes would cost more than the
	// memory it returns.
	compactMin = 64 << 10

	// arenaStep is the arena capacity up to which an arena doubles when it
	// grows; above it, it grows by a quarter, to keep its slack low.
	arenaStep = 64 << 10

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
	// arena holds the keys of all slots and the bytes of completed records.
	// Bytes once written are never modified, as [Store.Claim] hands out
	// records as slices of the arena: a new arena replaces it when it
	// grows or is compacted, and the old one lives on as long as someone
	// holds such a slice.
	arena []byte
	// garbage counts the arena's bytes that no slot refers to anymore.
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
	// The key is arena[koff:koff+klen]. The value, arena[voff:voff+vlen],
	// is a claim's token or a completed record's bytes. A token becomes
	// garbage when its claim is completed: in the arena it costs an append,
	// where a map of tokens would cost an insertion and a deletion.
	koff, klen uint32
	voff, vlen uint32
	// next is the next slot whose key has the same hash, or none.
	next int32
	done bool // a completed record, not a claim
}

// key returns the bytes of sl's key, which must not be modified.
func (sh *shard) key(sl *slot) []byte {
	return sh.arena[sl.koff : sl.koff+sl.klen]
}

// holdsToken reports whether sl, a claim, is token's.
func (sh *shard) holdsToken(sl *slot, token string) bool {
	// The conversion compares in place: it copies nothing.
	return string(sh.arena[sl.voff:sl.voff+sl.vlen]) == token
}

// record returns a completed record's bytes without copying them, with no
// room to append to in place. Callers of [Store.Claim] must not modify a
// record, and the store never writes over it, so sharing is safe.
func (sh *shard) record(sl *slot) []byte {
	if sl.vlen == 0 {
		return []byte{}
	}
	end := sl.voff + sl.vlen
	return sh.arena[sl.voff:end:end]
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
		if string(sh.arena[sl.koff:sl.koff+sl.klen]) == key {
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
	off, ok := sh.alloc(len(key)+len(token), limit)
	if !ok {
		return false
	}
	copy(sh.arena[off:], key)
	copy(sh.arena[off+len(key):], token)
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
		koff: uint32(off), klen: uint32(len(key)),
		voff: uint32(off + len(key)), vlen: uint32(len(token)),
	}
	sh.index[h] = i
	sh.earliest = min(sh.earliest, exp)
	return true
}

// complete turns claim i into a completed record of a copy of rec, until
// exp. It reports false, and changes nothing, when the arena has no room
// for rec under limit. The shard must be locked.
func (sh *shard) complete(i int32, rec []byte, exp int64, limit int) bool {
	off, ok := sh.alloc(len(rec), limit)
	if !ok {
		return false
	}
	copy(sh.arena[off:], rec)
	sl := &sh.slots[i]
	sh.garbage += int(sl.vlen) // the token
	sl.voff, sl.vlen = uint32(off), uint32(len(rec))
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

// alloc appends n bytes to the arena, to be written once, and returns
// where they start. It reports false, and changes nothing, when they do
// not fit under limit even without the garbage. The shard must be locked.
func (sh *shard) alloc(n, limit int) (int, bool) {
	off := len(sh.arena)
	if n <= cap(sh.arena)-off {
		sh.arena = sh.arena[:off+n]
		return off, true
	}
	live := off - sh.garbage
	if n > limit-live {
		return 0, false
	}
	// The arena must be copied anyway: the copy leaves out the garbage.
	sh.rebuild(sh.capacity(live+n, limit))
	off = len(sh.arena)
	sh.arena = sh.arena[:off+n]
	return off, true
}

// compact replaces the arena by one without its garbage, once the garbage
// outweighs the live bytes. Its cost, a copy of the live bytes, is paid
// for by the garbage written since the last compaction. The shard must be
// locked.
func (sh *shard) compact(limit int) {
	if sh.garbage < compactMin || sh.garbage <= len(sh.arena)-sh.garbage {
		return
	}
	sh.rebuild(sh.capacity(len(sh.arena)-sh.garbage, limit))
}

// capacity returns the capacity of a new arena that must hold need bytes:
// the current one grown by a quarter, which keeps the slack of a growing
// arena low, or doubled while it is small. It is at most twice need, so
// that an arena whose entries expire gives memory back, yet has room for
// as much garbage as live bytes: in a store that stays the same size, the
// arena is then copied once per compaction, not each time it fills up. The
// shard must be locked.
func (sh *shard) capacity(need, limit int) int {
	c := cap(sh.arena)
	if c < arenaStep {
		c = max(2*c, 512)
	} else {
		c += min(c/4, limit-c)
	}
	c = min(c, need+min(need, limit-need))
	return max(c, need)
}

// rebuild moves the arena's live bytes to a new arena of capacity c, which
// must hold them, leaving out the garbage. The old arena is left as it is,
// for whoever holds records in it. The shard must be locked.
func (sh *shard) rebuild(c int) {
	if c == 0 {
		sh.arena = nil
		sh.garbage = 0
		return
	}
	arena := make([]byte, 0, c)
	if sh.garbage == 0 {
		// Nothing to leave out: one copy moves it all.
		arena = append(arena, sh.arena...)
	} else {
		for i := range sh.slots {
			sl := &sh.slots[i]
			if sl.exp == 0 {
				continue
			}
			koff := len(arena)
			arena = append(arena, sh.arena[sl.koff:sl.koff+sl.klen]...)
			sl.koff = uint32(koff)
			if sl.vlen > 0 {
				voff := len(arena)
				arena = append(arena, sh.arena[sl.voff:sl.voff+sl.vlen]...)
				sl.voff = uint32(voff)
			}
		}
	}
	sh.arena = arena
	sh.garbage = 0
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

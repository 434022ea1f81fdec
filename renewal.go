package idempotency

import (
	"sync"
	"sync/atomic"
	"time"
)

// renewalShards spreads executions over this many queues, each with its own
// lock, so that concurrent requests seldom wait for each other.
const renewalShards = 8

// renewals schedules the lease renewals of an engine's executions. Every
// execution renews its lease the same interval after it started or last
// renewed, so a queue in order of arrival is also in order of due time: an
// execution joins at the tail and leaves in constant time, and one timer
// per queue, armed only while the queue has work, stands in for a timer per
// request. Most requests end long before their first renewal is due and
// never meet the timer at all.
type renewals struct {
	interval time.Duration
	base     time.Time // origin of due, from the monotonic clock
	shards   [renewalShards]renewalQueue
	// skew moves the clock forward; only tests set it (export_test.go).
	skew atomic.Int64
}

type renewalQueue struct {
	mu         sync.Mutex
	head, tail *Execution
	// timer fires at deadline, when the head is due or earlier; nil until
	// first needed. armed says whether it will fire: a timer that fires on
	// an empty queue is left unarmed, so an idle engine has none running.
	// A timer that fires early finds nothing due and is armed again.
	timer    *time.Timer
	armed    bool
	deadline int64
}

func newRenewals(interval time.Duration) *renewals {
	return &renewals{interval: interval, base: time.Now()}
}

// now reads the clock that due times are counted on.
func (r *renewals) now() int64 { return int64(time.Since(r.base)) + r.skew.Load() }

func (r *renewals) queue(x *Execution) *renewalQueue {
	// Storage keys are hashes: any byte of them spreads evenly.
	return &r.shards[x.key[0]%renewalShards]
}

// add schedules x's next renewal one interval after from.
func (r *renewals) add(x *Execution, from int64) {
	q := r.queue(x)
	due := from + int64(r.interval)
	q.mu.Lock()
	defer q.mu.Unlock()
	x.due = due
	// A renewal that took long is due before executions that joined while
	// it ran: it is put in its place from the tail, mostly a step or two.
	at := q.tail
	for at != nil && at.due > due {
		at = at.prev
	}
	x.prev = at
	if at == nil {
		x.next = q.head
		q.head = x
	} else {
		x.next = at.next
		at.next = x
	}
	if x.next == nil {
		q.tail = x
	} else {
		x.next.prev = x
	}
	x.queued = true
	if q.armed && due >= q.deadline {
		// The timer fires in time for x: a new execution is due an
		// interval from now, and the timer never waits longer than that.
		return
	}
	q.armed, q.deadline = true, due
	wait := time.Duration(due - r.now())
	if q.timer == nil {
		q.timer = time.AfterFunc(wait, func() { r.fire(q) })
		return
	}
	q.timer.Reset(wait)
}

// remove takes x out of its queue, if it is in one.
func (r *renewals) remove(x *Execution) {
	q := r.queue(x)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.unlink(x)
}

func (q *renewalQueue) unlink(x *Execution) {
	if !x.queued {
		return
	}
	if x.prev == nil {
		q.head = x.next
	} else {
		x.prev.next = x.next
	}
	if x.next == nil {
		q.tail = x.prev
	} else {
		x.next.prev = x.prev
	}
	x.prev, x.next, x.queued = nil, nil, false
}

// fire starts the renewals that are due and arms the timer for the next
// one, or leaves it unarmed when the queue is empty.
func (r *renewals) fire(q *renewalQueue) {
	now := r.now()
	var due []*Execution
	q.mu.Lock()
	for q.head != nil && q.head.due <= now {
		x := q.head
		q.unlink(x)
		due = append(due, x)
	}
	if q.head == nil {
		q.armed = false
	} else {
		q.armed, q.deadline = true, q.head.due
		q.timer.Reset(time.Duration(q.head.due - now))
	}
	q.mu.Unlock()
	for _, x := range due {
		x.startRenewal()
	}
}

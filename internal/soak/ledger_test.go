package soak

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemkey/idempotency"
)

// outcome is what one execution of the handler did.
type outcome uint8

const (
	outcomeRunning   outcome = iota // the handler has not returned yet
	outcomeJSON                     // a JSON answer: the middleware stores it
	outcomeText                     // a text/plain answer: released
	outcomePanic                    // a panic: released
	outcomeCancelled                // returned on its request's end without writing: released
)

func (o outcome) String() string {
	switch o {
	case outcomeJSON:
		return "JSON answer"
	case outcomeText:
		return "text answer (released)"
	case outcomePanic:
		return "panic (released)"
	case outcomeCancelled:
		return "request ended (released)"
	default:
		return "running"
	}
}

// released reports whether the SPEC has the middleware release the claim
// after such an outcome, so that a retry runs the handler again.
func (o outcome) released() bool {
	return o == outcomeText || o == outcomePanic || o == outcomeCancelled
}

// completion is what [idempotency.Store.Complete] answered for an
// execution.
type completion uint8

const (
	completionNone    completion = iota // Complete was not called
	completionStored                    // the record is stored
	completionNotHeld                   // ErrNotHeld: the claim was gone
	completionFailed                    // any other error: the store failed
)

func (c completion) String() string {
	switch c {
	case completionStored:
		return "stored"
	case completionNotHeld:
		return "not held"
	case completionFailed:
		return "failed"
	default:
		return "not called"
	}
}

// execution is one run of the handler, with what the store said about its
// claim.
type execution struct {
	id       string
	key      string
	instance int
	// attempt is how many executions of the key began before this one.
	attempt int

	// claimStart is when the claim call that won this execution's claim
	// was sent: the claim took effect no earlier.
	claimStart time.Time
	// lastCall is when the last store call on the claim (the claim
	// itself, or a renewal) returned, whatever it answered: the lease ran
	// out no earlier than a lease after the last call that found it held,
	// and so no later than a lease after lastCall.
	lastCall time.Time
	start    time.Time // the handler began
	end      time.Time // the handler returned (or panicked)
	outcome  outcome
	body     []byte // the JSON answer's body
	// clientGone is set when the request had ended before the handler
	// returned.
	clientGone bool

	complete      completion
	released      bool // Release was called and answered
	renewFailures int  // renewals that failed (not ErrNotHeld)
	leaseLost     bool // a renewal answered ErrNotHeld
	// stall is the longest time between the return of one store call on
	// the claim and the sending of the next; beyond a lease, the holder
	// itself was too late, whatever the store did.
	stall time.Duration
	// settled is when the last Complete or Release call returned.
	settled time.Time
}

// window returns the time during which the execution held, or believed it
// held, its claim.
func (x *execution) window() (from, to time.Time) {
	from, to = x.claimStart, x.settled
	if from.IsZero() {
		from = x.start
	}
	if to.IsZero() {
		to = x.end
	}
	if to.IsZero() {
		to = time.Now()
	}
	return from, to
}

// failure is why a client got no answer.
type failure uint8

const (
	failureNone      failure = iota
	failureCancelled         // the client's own deadline ended the request
	failureTransport         // the connection failed (a handler's panic, for one)
)

// observation is one request as its client saw it.
type observation struct {
	instance   int
	start, end time.Time
	status     int // 0 when no answer arrived
	replayed   bool
	json       bool   // the answer's Content-Type is JSON
	body       []byte // kept for 2xx answers only
	failure    failure
	sweep      bool // sent by the final sweep, after the faults
}

// keyLog is everything that happened to one key.
type keyLog struct {
	key       string
	behaviour behaviour
	execs     []*execution
	obs       []observation
}

// storeCounts counts the store calls of every instance, by answer.
type storeCounts struct {
	claims        map[string]int // by state, or "error"
	renewals      int
	renewFailures int
	leasesLost    int
	completes     map[completion]int
	releases      int
	releaseErrors int
	// unattributed counts the Complete and Release calls that no
	// execution could be found for: it stays 0 as long as the engine hands
	// the request's context to the store.
	unattributed int
}

// ledger records the executions of every instance and the requests of
// every client. It is safe for concurrent use.
type ledger struct {
	lease time.Duration
	ids   atomic.Int64

	mu      sync.Mutex
	keys    map[string]*keyLog
	order   []string // keys in the order they were made
	running map[*execution]struct{}
	idle    chan struct{} // closed while nothing runs
	store   storeCounts
}

func newLedger(lease time.Duration) *ledger {
	idle := make(chan struct{})
	close(idle)
	return &ledger{
		lease:   lease,
		keys:    make(map[string]*keyLog),
		running: make(map[*execution]struct{}),
		idle:    idle,
		store: storeCounts{
			claims:    make(map[string]int),
			completes: make(map[completion]int),
		},
	}
}

// addKey registers a key of the pool.
func (l *ledger) addKey(key string, b behaviour) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys[key] = &keyLog{key: key, behaviour: b}
	l.order = append(l.order, key)
}

// observe records what a client saw.
func (l *ledger) observe(key string, o observation) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kl := l.keys[key]
	kl.obs = append(kl.obs, o)
}

// begin records that instance's handler began to run for key, under the
// claim that sl holds, and ties the request's later store calls to it.
func (l *ledger) begin(key string, instance int, sl *slot) *execution {
	x := &execution{
		id:       fmt.Sprintf("x%06d", l.ids.Add(1)),
		key:      key,
		instance: instance,
		start:    time.Now(),
	}
	if sl != nil {
		x.claimStart, x.lastCall = sl.claimStart, sl.claimEnd
	}
	l.mu.Lock()
	kl := l.keys[key]
	x.attempt = len(kl.execs)
	kl.execs = append(kl.execs, x)
	if len(l.running) == 0 {
		l.idle = make(chan struct{})
	}
	l.running[x] = struct{}{}
	l.mu.Unlock()
	if sl != nil {
		sl.exec.Store(x)
	}
	return x
}

// end records how an execution ended.
func (l *ledger) end(x *execution, o outcome, body []byte, clientGone bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	x.end, x.outcome, x.body, x.clientGone = time.Now(), o, body, clientGone
	l.finish(x)
}

// finish marks x as no longer running, once its handler returned and its
// claim was settled (or nothing will settle it). The caller holds l.mu.
func (l *ledger) finish(x *execution) {
	if x.outcome == outcomeRunning || x.settled.IsZero() {
		return
	}
	if _, ok := l.running[x]; !ok {
		return
	}
	delete(l.running, x)
	if len(l.running) == 0 {
		close(l.idle)
	}
}

// waitIdle waits until no execution runs, or ctx ends.
func (l *ledger) waitIdle(ctx context.Context) error {
	l.mu.Lock()
	idle := l.idle
	l.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		return fmt.Errorf("%d executions still running: %w", len(l.running), ctx.Err())
	}
}

// slowRunningOn returns the instances that run a slow execution now.
func (l *ledger) slowRunningOn() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var in []int
	for x := range l.running {
		if l.keys[x.key].behaviour == behaviourSlow && x.outcome == outcomeRunning {
			in = append(in, x.instance)
		}
	}
	return in
}

// claimed counts a claim call's answer.
func (l *ledger) claimed(res idempotency.ClaimResult, err error) {
	name := res.State.String()
	if err != nil {
		name = "error"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store.claims[name]++
}

// renewed records a renewal of sl's claim, sent at sent.
func (l *ledger) renewed(sl *slot, sent time.Time, err error) {
	done := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store.renewals++
	// A renewal may fire before the handler has begun; it cannot be
	// attributed then, and need not be: the claim was just made.
	x := l.execOf(sl)
	if x != nil {
		x.stall = max(x.stall, sent.Sub(x.lastCall))
		x.lastCall = done
	}
	switch {
	case err == nil:
	case errors.Is(err, idempotency.ErrNotHeld):
		l.store.leasesLost++
		if x != nil {
			x.leaseLost = true
		}
	default:
		l.store.renewFailures++
		if x != nil {
			x.renewFailures++
		}
	}
}

// completed records the Complete call of sl's execution, sent at sent.
func (l *ledger) completed(sl *slot, sent time.Time, err error) {
	done := time.Now()
	c := completionStored
	switch {
	case errors.Is(err, idempotency.ErrNotHeld):
		c = completionNotHeld
	case err != nil:
		c = completionFailed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store.completes[c]++
	x := l.execOf(sl)
	if x == nil {
		l.store.unattributed++
		return
	}
	x.stall = max(x.stall, sent.Sub(x.lastCall))
	x.complete, x.settled = c, done
	l.finish(x)
}

// releasedClaim records the Release call of sl's execution.
func (l *ledger) releasedClaim(sl *slot, err error) {
	done := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store.releases++
	if err != nil && !errors.Is(err, idempotency.ErrNotHeld) {
		l.store.releaseErrors++
	}
	x := l.execOf(sl)
	if x == nil {
		l.store.unattributed++
		return
	}
	x.released, x.settled = true, done
	l.finish(x)
}

// execOf returns the execution that sl's request runs, or nil.
func (l *ledger) execOf(sl *slot) *execution {
	if sl == nil {
		return nil
	}
	return sl.exec.Load()
}

// snapshot returns the key logs in the order the keys were made, and the
// store counts. Nothing may run while the caller reads them.
func (l *ledger) snapshot() ([]*keyLog, storeCounts) {
	l.mu.Lock()
	defer l.mu.Unlock()
	logs := make([]*keyLog, len(l.order))
	for i, k := range l.order {
		logs[i] = l.keys[k]
	}
	return logs, l.store
}

// discard forgets every record, so that the heap measured afterwards
// holds only what the instances keep.
func (l *ledger) discard() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys, l.order = nil, nil
	l.store = storeCounts{}
}

package soak

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/stretchr/testify/assert"
)

// cause explains why a handler ran more than once for one key, or why one
// of its JSON answers was not stored.
type cause string

const (
	// causeAfterStored: the handler ran for a key whose response was
	// already stored. Never allowed.
	causeAfterStored cause = "ran after the response was stored (must be 0)"
	// causeTwoRecords: two executions of one key both stored their
	// response. Never allowed.
	causeTwoRecords cause = "two responses stored for one key (must be 0)"
	// causeLostByRestart: as causeAfterStored, but Redis was killed in
	// between; with fsync on every write, it must not happen either.
	causeLostByRestart cause = "record lost by a Redis restart (must be 0)"
	// causeDeadHolder: the execution's instance was cut off from Redis
	// (refused, or held beyond its store timeout) while it held the claim,
	// which ran out: SPEC §3.2.
	causeDeadHolder cause = "dead holder: instance cut off from Redis"
	// causeRedisDown: Redis was down while the execution held the claim.
	causeRedisDown cause = "dead holder: Redis down"
	// causeStalled: the holder sent a renewal or its completion more than a
	// lease after its previous store call on the claim returned.
	causeStalled cause = "holder stalled past its lease"
	// causeStoreFailure: a renewal or the completion failed, or the
	// instance's connections were cut or slowed: SPEC §6.2.
	causeStoreFailure cause = "store call failed (SPEC §6.2)"
	// causeUnexplained: nothing explains it. Never allowed.
	causeUnexplained cause = "unexplained (must be 0)"
)

// doubleCauses are the causes in the order the summary shows them.
var doubleCauses = []cause{
	causeDeadHolder, causeRedisDown, causeStalled, causeStoreFailure,
	causeAfterStored, causeTwoRecords, causeLostByRestart, causeUnexplained,
}

// recordOverhead estimates what a stored record costs beyond its body:
// status, headers, fingerprint and framing.
const recordOverhead = 256

// verdict is what the analysis of a run found.
type verdict struct {
	keys            int
	requests        int // sent during the load, not by the sweep
	duplicates      int // requests whose key had been sent before
	sweepRequests   int
	replays         int
	statuses        map[int]int
	cancelled       int // requests that their client's deadline ended
	transportErrors int

	executions            map[outcome]int
	executionsTotal       int
	storedAfterClientLeft int

	storedKeys  int
	storedBytes int64
	stored      map[string][]byte // each stored key's response body

	// doubles counts the executions beyond the first JSON answer of a
	// key, by cause.
	doubles map[cause]int
	// notStored counts the JSON answers that were not stored, by cause.
	notStored map[cause]int
	// ranAfterStored counts the executions of any outcome that began after
	// their key's response was stored (lostByRestart: with a restart in
	// between).
	ranAfterStored, lostByRestart int
	// storedUnreported counts the executions whose response is the key's
	// record although their Complete call did not report it stored.
	storedUnreported map[completion]int
	// wrongSettle counts the executions that the middleware settled
	// against the SPEC: a released outcome stored, or a JSON answer never
	// completed.
	wrongSettle int
	// badAnswers counts 2xx JSON answers (replays included) that are not a
	// response that the handler wrote for their key, and replays that
	// differ from the key's stored response.
	badAnswers int
	// mismatched counts keys whose clients got different 2xx JSON bodies:
	// explained when every extra execution of the key has a cause other
	// than the forbidden ones.
	mismatchedExplained, mismatchedUnexplained int

	problems     []string
	problemCount int
	// notes describe the double executions outside the dead-holder cases.
	notes []string
}

func (v *verdict) note(format string, args ...any) {
	if len(v.notes) < 10 {
		v.notes = append(v.notes, fmt.Sprintf(format, args...))
	}
}

func (v *verdict) problem(format string, args ...any) {
	v.problemCount++
	if len(v.problems) < 20 {
		v.problems = append(v.problems, fmt.Sprintf(format, args...))
	}
}

// failures returns the number of findings that break the library's
// promise.
func (v *verdict) failures() int {
	return v.ranAfterStored + v.lostByRestart + v.doubles[causeTwoRecords] + v.doubles[causeUnexplained] +
		v.wrongSettle + v.badAnswers + v.mismatchedUnexplained
}

// analyse checks a run's key logs against the faults injected during it.
func analyse(logs []*keyLog, faults []fault, lease time.Duration) *verdict {
	v := &verdict{
		statuses:   make(map[int]int),
		executions: make(map[outcome]int),
		stored:     make(map[string][]byte),
		doubles:    make(map[cause]int),
		notStored:  make(map[cause]int),

		storedUnreported: make(map[completion]int),
	}
	for _, kl := range logs {
		v.analyseKey(kl, faults, lease)
	}
	return v
}

func (v *verdict) analyseKey(kl *keyLog, faults []fault, lease time.Duration) {
	v.keys++
	sent := 0
	for _, o := range kl.obs {
		if o.sweep {
			v.sweepRequests++
			continue
		}
		sent++
		if o.status != 0 {
			v.statuses[o.status]++
		}
		if o.replayed {
			v.replays++
		}
		switch o.failure {
		case failureCancelled:
			v.cancelled++
		case failureTransport:
			v.transportErrors++
		}
	}
	v.requests += sent
	v.duplicates += max(sent-1, 0)

	byID := make(map[string]*execution, len(kl.execs))
	var answers, stored []*execution
	for _, x := range kl.execs {
		byID[x.id] = x
		v.executions[x.outcome]++
		v.executionsTotal++
		switch {
		case x.outcome == outcomeRunning:
			v.wrongSettle++
			v.problem("key %s: execution %s never returned", kl.key, x.id)
		case x.outcome.released():
			if x.complete != completionNone || !x.released {
				v.wrongSettle++
				v.problem("key %s: execution %s (%v) was not released (complete %v, released %t)",
					kl.key, x.id, x.outcome, x.complete, x.released)
			}
		case x.complete == completionNone:
			v.wrongSettle++
			v.problem("key %s: execution %s answered JSON but its response was never completed", kl.key, x.id)
		}
		if x.outcome != outcomeJSON {
			continue
		}
		answers = append(answers, x)
		if x.complete == completionStored {
			stored = append(stored, x)
			if x.clientGone {
				v.storedAfterClientLeft++
			}
		}
	}

	// storedAt is when the key's response was stored at the latest: when
	// the Complete that stored it returned, or when a client received a
	// replay of it.
	var storedAt time.Time
	slices.SortFunc(stored, func(a, b *execution) int { return a.settled.Compare(b.settled) })
	if len(stored) > 0 {
		storedAt = stored[0].settled
	}
	for _, o := range kl.obs {
		if o.replayed && (storedAt.IsZero() || o.end.Before(storedAt)) {
			storedAt = o.end
		}
	}

	// An execution whose claim was sent after the response was stored
	// claimed a key that held a record: the claim took effect later still.
	flagged := make(map[*execution]bool)
	for _, x := range kl.execs {
		from, _ := x.window()
		if storedAt.IsZero() || !from.After(storedAt) {
			continue
		}
		flagged[x] = true
		c := causeAfterStored
		if restartBetween(faults, storedAt, from) {
			c = causeLostByRestart
			v.lostByRestart++
		} else {
			v.ranAfterStored++
		}
		v.problem("key %s: execution %s (%v) on instance %d claimed %v after the response was stored (%s)",
			kl.key, x.id, x.outcome, x.instance, from.Sub(storedAt), c)
		if x.outcome == outcomeJSON {
			v.doubles[c]++
		}
	}
	violated := len(flagged) > 0
	if len(stored) > 1 {
		for _, x := range stored[1:] {
			if flagged[x] {
				continue
			}
			v.doubles[causeTwoRecords]++
			violated = true
			v.problem("key %s: executions %s and %s both stored a response", kl.key, stored[0].id, x.id)
		}
	}

	// Every JSON answer that was not stored let a later execution claim
	// the key again, if there is one; each needs a cause.
	var lost []*execution
	for _, x := range answers {
		if x.complete != completionStored && !flagged[x] {
			lost = append(lost, x)
		}
	}
	slices.SortFunc(lost, func(a, b *execution) int { a0, _ := a.window(); b0, _ := b.window(); return a0.Compare(b0) })
	for i, x := range lost {
		c := causeOf(x, faults, lease)
		v.notStored[c]++
		if len(answers) < 2 || (len(stored) == 0 && i == len(lost)-1) {
			// No later execution ran because of this one.
			continue
		}
		v.doubles[c]++
		if c != causeDeadHolder && c != causeRedisDown {
			v.note("%s on instance %d: %s (complete %v, renewal failures %d, lease lost %t, longest stall %v)",
				x.id, x.instance, c, x.complete, x.renewFailures, x.leaseLost, x.stall.Round(time.Millisecond))
		}
		if c == causeUnexplained {
			violated = true
			v.problem("key %s: execution %s on instance %d answered JSON, was not stored (complete %v, renewal failures %d, lease lost %t) and ran again, with no fault to explain it",
				kl.key, x.id, x.instance, x.complete, x.renewFailures, x.leaseLost)
		}
	}

	v.checkBodies(kl, byID, stored, violated)
}

// checkBodies checks what the clients received for one key: every replay
// is the key's stored response, every 2xx JSON answer is one that the
// handler wrote for this key, and all of them are one body unless the key
// ran more than once for a cause that the SPEC allows.
func (v *verdict) checkBodies(kl *keyLog, byID map[string]*execution, stored []*execution, violated bool) {
	var record, replay []byte
	if len(stored) == 1 {
		record = stored[0].body
	}
	bodies := make(map[string]bool)
	for _, o := range kl.obs {
		if o.status < 200 || o.status >= 300 || (!o.json && !o.replayed) {
			continue
		}
		what := "answer"
		if o.replayed {
			what = "replay"
		}
		if !o.json || o.status != http.StatusCreated {
			v.badAnswers++
			v.problem("key %s: %s with status %d and a body that is not JSON: %q", kl.key, what, o.status, o.body)
			continue
		}
		var ans chargeAnswer
		err := json.Unmarshal(o.body, &ans)
		x := byID[ans.Execution]
		switch {
		case err != nil || ans.Key != kl.key:
			v.badAnswers++
			v.problem("key %s: %s from instance %d is not one of this key's: %q", kl.key, what, o.instance, o.body)
			continue
		case x == nil || x.outcome != outcomeJSON || !bytes.Equal(x.body, o.body):
			v.badAnswers++
			v.problem("key %s: %s from instance %d is no answer that the handler wrote: %q", kl.key, what, o.instance, o.body)
			continue
		}
		bodies[string(o.body)] = true
		if !o.replayed {
			continue
		}
		if replay == nil {
			replay = o.body
		}
		if !bytes.Equal(replay, o.body) || (record != nil && !bytes.Equal(record, o.body)) {
			v.badAnswers++
			v.problem("key %s: replay of execution %s from instance %d differs from the stored response", kl.key, x.id, o.instance)
		}
	}
	if len(bodies) > 1 {
		if violated {
			v.mismatchedUnexplained++
			v.problem("key %s: clients got %d different bodies", kl.key, len(bodies))
		} else {
			v.mismatchedExplained++
		}
	}
	body := record
	if body == nil {
		body = replay
	}
	for _, x := range byID {
		if body != nil && x.complete != completionStored && bytes.Equal(x.body, body) {
			// Its Complete was sent again after a lost reply, and the
			// second found the record that the first had stored.
			v.storedUnreported[x.complete]++
		}
	}
	if body != nil {
		v.storedKeys++
		v.storedBytes += int64(len(body)) + recordOverhead
		v.stored[kl.key] = body
	}
}

// causeOf explains why x's JSON answer was not stored.
func causeOf(x *execution, faults []fault, lease time.Duration) cause {
	from, to := x.window()
	var blocked, down, slowed bool
	for _, f := range faults {
		if !f.overlaps(x.instance, from, to) {
			continue
		}
		switch f.kind {
		case faultBlock, faultHold:
			blocked = true
		case faultKill:
			down = true
		case faultCut, faultLatency:
			slowed = true
		}
	}
	switch {
	case blocked:
		return causeDeadHolder
	case down:
		return causeRedisDown
	case x.stall > lease:
		return causeStalled
	case x.complete == completionFailed || x.renewFailures > 0 || slowed:
		return causeStoreFailure
	}
	return causeUnexplained
}

// restartBetween reports whether Redis was killed between from and to.
func restartBetween(faults []fault, from, to time.Time) bool {
	for _, f := range faults {
		if f.kind == faultKill && f.start.Before(to) && f.end.After(from) {
			return true
		}
	}
	return false
}

// table renders rows of names and values as aligned text.
func table(rows [][2]string) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(w, "  %s\t%s\n", r[0], r[1])
	}
	_ = w.Flush()
	return b.String()
}

// TestAnalyse checks that the soak test's analysis tells the allowed from
// the forbidden: without it, a soak run that finds nothing proves nothing.
func TestAnalyse(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	answer := func(id string) []byte {
		b, _ := json.Marshal(chargeAnswer{Key: "k", Execution: id, Status: "succeeded"})
		return b
	}
	// exec is a JSON execution on instance 0 that claimed at from and
	// settled at to.
	exec := func(id string, from, to int, c completion) *execution {
		return &execution{
			id: id, key: "k", claimStart: at(from), lastCall: at(from), start: at(from), end: at(to - 1),
			outcome: outcomeJSON, body: answer(id), complete: c, settled: at(to),
		}
	}
	first := func(id string, from, to int) observation {
		return observation{start: at(from), end: at(to), status: http.StatusCreated, json: true, body: answer(id)}
	}
	replay := func(id string, from, to int) observation {
		o := first(id, from, to)
		o.replayed = true
		return o
	}
	released := func(id string, o outcome, from, to int) *execution {
		return &execution{id: id, key: "k", claimStart: at(from), start: at(from), end: at(to - 1),
			outcome: o, released: true, settled: at(to)}
	}
	tests := []struct {
		name   string
		execs  []*execution
		obs    []observation
		faults []fault

		wantDoubles     map[cause]int
		wantAfterStored int
		wantBad         int
		wantMismatch    [2]int // explained, unexplained
		wantFailures    int
	}{
		{
			name:        "one execution, replayed",
			execs:       []*execution{exec("x1", 0, 100, completionStored)},
			obs:         []observation{first("x1", 0, 110), replay("x1", 200, 210)},
			wantDoubles: map[cause]int{},
		},
		{
			name: "released outcomes run again",
			execs: []*execution{
				released("x1", outcomePanic, 0, 50),
				released("x2", outcomeText, 100, 150),
				exec("x3", 200, 300, completionStored),
			},
			obs:         []observation{first("x3", 200, 310)},
			wantDoubles: map[cause]int{},
		},
		{
			name: "a released outcome that was stored",
			execs: []*execution{
				{id: "x1", key: "k", start: at(0), end: at(10), outcome: outcomeText, complete: completionStored, settled: at(20)},
			},
			wantDoubles:  map[cause]int{},
			wantFailures: 1,
		},
		{
			name:            "ran after the response was stored",
			execs:           []*execution{exec("x1", 0, 100, completionStored), exec("x2", 200, 300, completionNotHeld)},
			obs:             []observation{first("x1", 0, 110), first("x2", 200, 310)},
			wantDoubles:     map[cause]int{causeAfterStored: 1},
			wantAfterStored: 1,
			wantMismatch:    [2]int{0, 1},
			wantFailures:    2,
		},
		{
			name:            "ran after a replay was seen",
			execs:           []*execution{exec("x1", 0, 100, completionNotHeld), released("x2", outcomePanic, 300, 350)},
			obs:             []observation{replay("x1", 150, 200)},
			wantDoubles:     map[cause]int{},
			wantAfterStored: 1,
			wantFailures:    1,
		},
		{
			name:   "record lost across a restart",
			execs:  []*execution{exec("x1", 0, 100, completionStored), exec("x2", 500, 600, completionStored)},
			faults: []fault{{kind: faultKill, instance: -1, start: at(200), end: at(400)}},
			// The second stored record follows the lost one: counted
			// once, as the loss.
			wantDoubles:  map[cause]int{causeLostByRestart: 1},
			wantFailures: 1,
		},
		{
			name:         "dead holder: the first holder's instance was blocked",
			execs:        []*execution{exec("x1", 0, 2000, completionNotHeld), exec("x2", 1200, 1300, completionStored)},
			obs:          []observation{first("x1", 0, 2010), first("x2", 1200, 1310), replay("x2", 2100, 2110)},
			faults:       []fault{{kind: faultBlock, instance: 0, start: at(100), end: at(1800)}},
			wantDoubles:  map[cause]int{causeDeadHolder: 1},
			wantMismatch: [2]int{1, 0},
		},
		{
			name:        "the block was on another instance",
			execs:       []*execution{exec("x1", 0, 2000, completionNotHeld), exec("x2", 1200, 1300, completionStored)},
			obs:         []observation{first("x1", 0, 2010), first("x2", 1200, 1310)},
			faults:      []fault{{kind: faultBlock, instance: 1, start: at(100), end: at(1800)}},
			wantDoubles: map[cause]int{causeUnexplained: 1},
			// Both the double and the bodies count.
			wantMismatch: [2]int{0, 1},
			wantFailures: 2,
		},
		{
			name: "completion failed",
			execs: []*execution{
				func() *execution { x := exec("x1", 0, 100, completionFailed); x.released = true; return x }(),
				exec("x2", 1200, 1300, completionStored),
			},
			wantDoubles: map[cause]int{causeStoreFailure: 1},
		},
		{
			name: "a stalled holder",
			execs: []*execution{
				func() *execution {
					x := exec("x1", 0, 2000, completionNotHeld)
					x.stall = 1500 * time.Millisecond
					return x
				}(),
				exec("x2", 1200, 1300, completionStored),
			},
			wantDoubles: map[cause]int{causeStalled: 1},
		},
		{
			name:         "two records",
			execs:        []*execution{exec("x1", 0, 1000, completionStored), exec("x2", 500, 900, completionStored)},
			wantDoubles:  map[cause]int{causeTwoRecords: 1},
			wantFailures: 1,
		},
		{
			name:  "a replay of another key",
			execs: []*execution{exec("x1", 0, 100, completionStored)},
			obs: []observation{{start: at(200), end: at(210), status: http.StatusCreated, json: true, replayed: true,
				body: []byte(`{"key":"other","execution":"x1"}`)}},
			wantDoubles:  map[cause]int{},
			wantBad:      1,
			wantFailures: 1,
		},
		{
			name:         "a replay that differs from the stored response",
			execs:        []*execution{exec("x1", 0, 100, completionStored), exec("x0", -900, -800, completionNotHeld)},
			obs:          []observation{replay("x0", 200, 210)},
			wantDoubles:  map[cause]int{causeUnexplained: 1},
			wantBad:      1,
			wantFailures: 2,
		},
		{
			name:         "a text answer replayed",
			execs:        []*execution{released("x1", outcomeText, 0, 100)},
			obs:          []observation{{start: at(200), end: at(210), status: http.StatusOK, replayed: true, body: []byte("charge x1 accepted\n")}},
			wantDoubles:  map[cause]int{},
			wantBad:      1,
			wantFailures: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := analyse([]*keyLog{{key: "k", execs: tt.execs, obs: tt.obs}}, tt.faults, time.Second)
			doubles := make(map[cause]int)
			for c, n := range v.doubles {
				if n > 0 {
					doubles[c] = n
				}
			}
			assert.Equal(t, tt.wantDoubles, doubles, "doubles")
			assert.Equal(t, tt.wantAfterStored, v.ranAfterStored, "ran after stored")
			assert.Equal(t, tt.wantBad, v.badAnswers, "bad answers")
			assert.Equal(t, tt.wantMismatch, [2]int{v.mismatchedExplained, v.mismatchedUnexplained}, "mismatched bodies")
			assert.Equal(t, tt.wantFailures, v.failures(), "failures: %v", v.problems)
		})
	}
}

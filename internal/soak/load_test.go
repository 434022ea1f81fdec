package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/idemkey/idempotency"
)

// behaviour is what the handler does for a key. It travels in the request
// body, so that every retry of a key asks for the same behaviour.
type behaviour string

const (
	// behaviourNormal answers JSON after a short random delay.
	behaviourNormal behaviour = "normal"
	// behaviourSlow answers JSON after more than a lease, so that only
	// renewal keeps the claim, and a holder cut off from Redis loses it.
	behaviourSlow behaviour = "slow"
	// behaviourPanic panics on the key's first execution.
	behaviourPanic behaviour = "panic"
	// behaviourText answers text/plain on the key's first execution.
	behaviourText behaviour = "text"
	// behaviourCancel waits for its request to end on the key's first
	// execution, and returns without writing if it does; its clients
	// mostly give up early.
	behaviourCancel behaviour = "cancel"
)

// behaviours are drawn for new keys with these weights.
var behaviours = []struct {
	b      behaviour
	weight int
}{
	{behaviourNormal, 55},
	{behaviourSlow, 12},
	{behaviourPanic, 11},
	{behaviourText, 11},
	{behaviourCancel, 11},
}

func drawBehaviour(rng *rand.Rand) behaviour {
	total := 0
	for _, w := range behaviours {
		total += w.weight
	}
	n := rng.IntN(total)
	for _, w := range behaviours {
		if n < w.weight {
			return w.b
		}
		n -= w.weight
	}
	return behaviourNormal
}

// errPlannedPanic is what a panicking handler panics with.
var errPlannedPanic = errors.New("soak: planned panic")

// chargeRequest is the request body that clients send.
type chargeRequest struct {
	Key         string    `json:"key"`
	Behaviour   behaviour `json:"behaviour"`
	AmountCents int       `json:"amount_cents"`
}

// chargeAnswer is the JSON body that the handler answers; Execution tells
// the clients which run of the handler produced it.
type chargeAnswer struct {
	Key       string `json:"key"`
	Execution string `json:"execution"`
	Instance  int    `json:"instance"`
	Status    string `json:"status"`
	Memo      string `json:"memo,omitempty"`
}

// handlerTiming sets how long the handler's behaviours take.
type handlerTiming struct {
	lease time.Duration
	// cancelWait is how long a cancel-behaviour execution waits for its
	// request to end before it answers normally.
	cancelWait time.Duration
}

// newHandler returns instance's handler, which records each execution in
// led.
func newHandler(instance int, led *ledger, timing handlerTiming) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req chargeRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Key == "" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		ctx := r.Context()
		x := led.begin(req.Key, instance, slotOf(ctx))
		first := x.attempt == 0
		switch {
		case req.Behaviour == behaviourPanic && first:
			led.end(x, outcomePanic, nil, ctx.Err() != nil)
			panic(errPlannedPanic)
		case req.Behaviour == behaviourText && first:
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = io.WriteString(w, "charge "+x.id+" accepted\n")
			led.end(x, outcomeText, nil, ctx.Err() != nil)
			return
		case req.Behaviour == behaviourCancel && first:
			t := time.NewTimer(timing.cancelWait)
			select {
			case <-ctx.Done():
				t.Stop()
				led.end(x, outcomeCancelled, nil, true)
				return
			case <-t.C:
			}
		}
		// The work ignores the request's end, as real work often does: a
		// response finished after its client left is still stored.
		delay := rand.N(50 * time.Millisecond)
		if req.Behaviour == behaviourSlow {
			delay = timing.lease + timing.lease/5 + rand.N(timing.lease*3/5)
		}
		time.Sleep(delay)
		body, _ := json.Marshal(chargeAnswer{
			Key:       req.Key,
			Execution: x.id,
			Instance:  instance,
			Status:    "succeeded",
			Memo:      strings.Repeat("m", rand.IntN(256)),
		})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
		led.end(x, outcomeJSON, body, ctx.Err() != nil)
	}
}

// soakKey is a key of the pool, with the body that every request for it
// sends.
type soakKey struct {
	id        string
	behaviour behaviour
	body      []byte
}

// keyPool hands out keys to the clients: often a new one, otherwise one of
// the most recent, so that duplicates meet while their keys are hot. It is
// safe for concurrent use.
type keyPool struct {
	led *ledger

	mu   sync.Mutex
	keys []*soakKey
}

const (
	// newKeyRate is the share of client sessions that start a new key.
	newKeyRate = 0.3
	// hotKeys is how many of the most recent keys the other sessions pick
	// from.
	hotKeys = 48
)

func (p *keyPool) pick(rng *rand.Rand) *soakKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.keys) == 0 || rng.Float64() < newKeyRate {
		return p.add(drawBehaviour(rng), rng)
	}
	return p.keys[len(p.keys)-1-rng.IntN(min(len(p.keys), hotKeys))]
}

// add makes a key. The caller holds p.mu.
func (p *keyPool) add(b behaviour, rng *rand.Rand) *soakKey {
	id := uuid.NewString()
	body, _ := json.Marshal(chargeRequest{Key: id, Behaviour: b, AmountCents: 100 + rng.IntN(100_000)})
	k := &soakKey{id: id, behaviour: b, body: body}
	p.led.addKey(id, b)
	p.keys = append(p.keys, k)
	return k
}

// newKey makes a key of behaviour b, outside the clients' draw.
func (p *keyPool) newKey(b behaviour, rng *rand.Rand) *soakKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.add(b, rng)
}

// sender sends requests to the instances and records what it saw.
type sender struct {
	urls    []string
	client  *http.Client
	led     *ledger
	timeout time.Duration // a request's deadline unless it is cut short
}

// send posts k's body to instance with the given deadline, and records
// what came back.
func (s *sender) send(ctx context.Context, k *soakKey, instance int, timeout time.Duration, sweep bool) observation {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	o := observation{instance: instance, start: time.Now(), sweep: sweep}
	if err := s.post(ctx, k, instance, &o); err != nil {
		o.failure = failureTransport
		if ctx.Err() != nil {
			o.failure = failureCancelled
		}
	}
	o.end = time.Now()
	s.led.observe(k.id, o)
	return o
}

// post sends one request and fills in o from its answer.
func (s *sender) post(ctx context.Context, k *soakKey, instance int, o *observation) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.urls[instance]+"/charges", bytes.NewReader(k.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(idempotency.DefaultIdempotencyHeader, k.id)
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	o.status = resp.StatusCode
	o.replayed = resp.Header.Get(idempotency.DefaultReplayHeader) == "true"
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	o.json = mt == "application/json" || strings.HasSuffix(mt, "+json")
	if o.status >= 200 && o.status < 300 {
		o.body = body
	}
	return nil
}

// clientConfig shapes one client's behaviour.
type clientConfig struct {
	// attempts bounds the requests of one session on one key.
	attempts int
	// retryRate is how often a client sends a key again after a 2xx.
	retryRate float64
	// cutShortRate is how often a request gets a deadline of at most
	// 150 ms; for keys of behaviourCancel, cancelRate.
	cutShortRate, cancelRate float64
}

var defaultClient = clientConfig{attempts: 6, retryRate: 0.35, cutShortRate: 0.08, cancelRate: 0.7}

// runClient sends sessions of requests until load ends. A session takes a
// key from the pool and sends it to random instances: again after a
// conflict, a store failure or a failed request, and sometimes after a
// success, each time after a random pause. Requests run on reqCtx, so that
// the end of the load does not cut the last ones short.
func runClient(load, reqCtx context.Context, s *sender, pool *keyPool, cfg clientConfig, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for load.Err() == nil {
		k := pool.pick(rng)
		for range cfg.attempts {
			timeout := s.timeout
			switch {
			case k.behaviour == behaviourCancel && rng.Float64() < cfg.cancelRate:
				timeout = 30*time.Millisecond + rand.N(220*time.Millisecond)
			case rng.Float64() < cfg.cutShortRate:
				timeout = 5*time.Millisecond + rand.N(145*time.Millisecond)
			}
			o := s.send(reqCtx, k, rng.IntN(len(s.urls)), timeout, false)
			var pause time.Duration
			switch {
			case o.status >= 200 && o.status < 300:
				if rng.Float64() >= cfg.retryRate {
					pause = -1
				} else {
					pause = rand.N(300 * time.Millisecond)
				}
			case o.status == 0 || o.status == http.StatusConflict || o.status >= 500:
				pause = 20*time.Millisecond + rand.N(380*time.Millisecond)
			default:
				pause = -1
			}
			if pause < 0 || !sleep(load, pause) {
				break
			}
		}
	}
}

// sleep pauses for d unless ctx ends first; it reports whether it slept.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// sweepResult is what the final sweep found.
type sweepResult struct {
	keys     int
	requests int
	// notReplayed counts the requests that were not answered with a
	// replay of the key's stored body.
	notReplayed int
	examples    []string
}

// sweep sends every key of keys to every instance, once the faults are
// over, and checks that each answers a replay of the stored body.
func sweep(ctx context.Context, s *sender, keys []*soakKey, stored map[string][]byte) sweepResult {
	res := sweepResult{keys: len(keys)}
	var mu sync.Mutex
	work := make(chan *soakKey)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for k := range work {
				for in := range s.urls {
					o := sweepOne(ctx, s, k, in)
					ok := o.replayed && o.status == http.StatusCreated && bytes.Equal(o.body, stored[k.id])
					mu.Lock()
					res.requests++
					if !ok {
						res.notReplayed++
						if len(res.examples) < 5 {
							res.examples = append(res.examples,
								"instance "+strconv.Itoa(in)+": status "+strconv.Itoa(o.status)+
									", replayed "+strconv.FormatBool(o.replayed)+", body "+string(o.body))
						}
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	return res
}

// sweepOne asks instance for k, again after a conflict or a failure, which
// only a claim left from the faults could cause.
func sweepOne(ctx context.Context, s *sender, k *soakKey, instance int) observation {
	var o observation
	for range 5 {
		o = s.send(ctx, k, instance, s.timeout, true)
		if o.status != 0 && o.status != http.StatusConflict && o.status < 500 {
			return o
		}
		if !sleep(ctx, 200*time.Millisecond) {
			break
		}
	}
	return o
}

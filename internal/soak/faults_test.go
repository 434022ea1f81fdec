package soak

import (
	"math/rand/v2"
	"time"

	"github.com/idemkey/idempotency/internal/faultproxy"
	"github.com/idemkey/idempotency/internal/redistest"
)

// faultKind names a fault the injector puts between the instances and
// Redis.
type faultKind string

const (
	// faultKill kills Redis (SIGKILL) and starts it again on the same port
	// and files after a pause: nothing acknowledged may be lost, since it
	// writes its append-only file before it answers.
	faultKill faultKind = "Redis killed and restarted"
	// faultLatency delays everything one instance exchanges with Redis.
	faultLatency faultKind = "latency on one instance"
	// faultHold delays everything one instance exchanges with Redis by
	// more than its store timeout: to that instance Redis does not answer,
	// as behind a network that drops packets.
	faultHold faultKind = "instance's Redis traffic held"
	// faultCut closes every connection of one instance to Redis.
	faultCut faultKind = "connections cut on one instance"
	// faultBlock cuts one instance off from Redis for longer than a lease:
	// a claim it holds runs out, and another instance may take the key.
	faultBlock faultKind = "instance cut off for over a lease"
)

var faultKinds = []faultKind{faultKill, faultLatency, faultCut, faultBlock, faultHold}

// fault is one injected fault. Instance is -1 for a fault of Redis itself.
type fault struct {
	kind       faultKind
	instance   int
	start, end time.Time
}

// overlaps reports whether the fault touched instance between from and to.
func (f fault) overlaps(instance int, from, to time.Time) bool {
	if f.instance >= 0 && f.instance != instance {
		return false
	}
	return !f.start.After(to) && !f.end.Before(from)
}

// injector injects faults, one at a time.
type injector struct {
	redis   *redistest.Server
	proxies []*faultproxy.Proxy
	led     *ledger
	lease   time.Duration
	// storeTimeout is the instances' store timeout.
	storeTimeout time.Duration
	rng          *rand.Rand
	faults       []fault
}

// run injects faults until the next one could not end by until: every
// kind in turn, in an order shuffled anew each round, with pauses between.
// It calls the Redis server's methods, so it runs on the test's goroutine.
func (in *injector) run(until time.Time) {
	kinds := append([]faultKind(nil), faultKinds...)
	for {
		in.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		for _, k := range kinds {
			pause := 300*time.Millisecond + rand.N(1200*time.Millisecond)
			if time.Now().Add(pause + in.longest()).After(until) {
				return
			}
			time.Sleep(pause)
			in.inject(k)
		}
	}
}

// longest bounds how long one fault lasts: a cut-off instance stays cut
// off for up to twice the lease, latency for up to three seconds.
func (in *injector) longest() time.Duration {
	return max(3*time.Second, 2*in.lease+300*time.Millisecond)
}

// inject injects one fault of kind k and waits until it is over.
func (in *injector) inject(k faultKind) {
	f := fault{kind: k, instance: in.rng.IntN(len(in.proxies)), start: time.Now()}
	switch k {
	case faultKill:
		f.instance = -1
		in.redis.Kill()
		time.Sleep(200*time.Millisecond + rand.N(600*time.Millisecond))
		in.redis.Start()
	case faultLatency:
		p := in.proxies[f.instance]
		p.SetLatency(10*time.Millisecond + rand.N(140*time.Millisecond))
		time.Sleep(time.Second + rand.N(2*time.Second))
		p.SetLatency(0)
	case faultHold:
		f.instance = in.busyInstance(f.instance)
		p := in.proxies[f.instance]
		p.SetLatency(in.storeTimeout/2 + rand.N(in.storeTimeout))
		time.Sleep(in.lease + rand.N(in.lease))
		p.SetLatency(0)
	case faultCut:
		in.proxies[f.instance].Cut()
	case faultBlock:
		f.instance = in.busyInstance(f.instance)
		p := in.proxies[f.instance]
		p.Block()
		time.Sleep(in.lease + 300*time.Millisecond + rand.N(in.lease))
		p.Unblock()
	}
	f.end = time.Now()
	in.faults = append(in.faults, f)
}

// busyInstance returns an instance that runs a slow execution now, or
// otherwise: cutting off an instance that holds a slow claim is what makes
// a dead holder.
func (in *injector) busyInstance(otherwise int) int {
	if busy := in.led.slowRunningOn(); len(busy) > 0 {
		return busy[in.rng.IntN(len(busy))]
	}
	return otherwise
}

// heal undoes whatever a fault may have left: Redis runs and every proxy
// forwards without delay.
func (in *injector) heal() {
	in.redis.Start()
	for _, p := range in.proxies {
		p.SetLatency(0)
		p.Unblock()
	}
}

// counts returns how many faults of each kind were injected, and how long
// they lasted in all.
func (in *injector) counts() (map[faultKind]int, map[faultKind]time.Duration) {
	n := make(map[faultKind]int)
	d := make(map[faultKind]time.Duration)
	for _, f := range in.faults {
		n[f.kind]++
		d[f.kind] += f.end.Sub(f.start)
	}
	return n, d
}

package soak

import (
	"context"
	"fmt"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/internal/faultproxy"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

const (
	// envSoak names the variable that turns the soak test on: a duration
	// such as 45s, or 1 for [defaultSoak].
	envSoak = "IDEMPOTENCY_SOAK"
	// defaultSoak is how long the load runs when envSoak is 1.
	defaultSoak = 30 * time.Second
	// ciCap bounds the load's duration in CI: where the CI variable is set,
	// or IDEMPOTENCY_REQUIRE_REDIS=1 as .ci/run sets it.
	ciCap = 60 * time.Second

	soakInstances = 3
	soakClients   = 32
	// soakLease is short, so that holders cut off from Redis lose their
	// claims during the run.
	soakLease = time.Second
	// soakStoreTimeout is short too, but leaves a renewal that takes all
	// of it a third of the lease to spare.
	soakStoreTimeout = 500 * time.Millisecond
	// soakExpiry outlives the run: every stored record must be replayed
	// until the end.
	soakExpiry = time.Hour
	// soakWait is how long duplicates wait on the instance that waits.
	soakWait = 500 * time.Millisecond
	// requestTimeout is a client's deadline unless it cuts a request
	// short: longer than the slowest handler and its store calls.
	requestTimeout = 5 * time.Second
	// redisPool is the size of each instance's Redis connection pool.
	redisPool = 24
	// sweepKeys bounds how many stored keys the final sweep asks every
	// instance for.
	sweepKeys = 300
	// sweepTimeout bounds the sweep: a request that it cuts short counts
	// as not replayed.
	sweepTimeout = 10 * time.Second
	// idleTimeout bounds the wait for the last handlers, after the load
	// and after the sweep.
	idleTimeout = 10 * time.Second
)

// soakDuration returns how long the load runs, or skips the test when
// envSoak is not set.
func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(envSoak)
	if v == "" {
		t.Skipf("soak test: set %s to a duration to run it (1 means %v), for example:\n"+
			"\t%s=60s go test -race -run Soak ./internal/soak -v", envSoak, defaultSoak, envSoak)
	}
	d := defaultSoak
	if v != "1" {
		var err error
		d, err = time.ParseDuration(v)
		require.NoError(t, err, "%s must be a duration such as 45s, or 1", envSoak)
		require.Positive(t, d, "%s must be positive", envSoak)
	}
	if (os.Getenv("CI") != "" || os.Getenv(redistest.EnvRequire) == "1") && d > ciCap {
		t.Logf("soak test: %s=%v capped to %v in CI", envSoak, d, ciCap)
		d = ciCap
	}
	if deadline, ok := t.Deadline(); ok {
		// Draining, the sweep and the shutdown take a few seconds, and
		// are bounded to about 40 s.
		if left := time.Until(deadline) - 45*time.Second; d > left {
			require.Greater(t, left, 5*time.Second, "go test -timeout leaves no time for the soak test")
			t.Logf("soak test: %v shortened to %v to end before go test's -timeout", d, left)
			d = left
		}
	}
	return d
}

// soakEnv is the system under test: Redis, and for each instance a fault
// proxy, a Redis client and store through it, and the middleware on an
// HTTP server.
type soakEnv struct {
	redis     *redistest.Server
	proxies   []*faultproxy.Proxy
	clients   []*redis.Client
	stores    []*redisstore.Store
	servers   []*httptest.Server
	transport *http.Transport
	urls      []string
	once      sync.Once
}

// startEnv starts the system. Instance 1's store keeps a local cache of
// records and instance 2's duplicates wait for the first request instead of
// answering 409 at once, so that both run under faults too.
func startEnv(t *testing.T, led *ledger, logs *logCounter, srvLog *serverLog) *soakEnv {
	t.Helper()
	e := &soakEnv{redis: redistest.StartServer(t, redistest.WithAppendOnly())}
	timing := handlerTiming{lease: soakLease, cancelWait: 300 * time.Millisecond}
	for i := range soakInstances {
		p := faultproxy.Start(t, e.redis.Addr())
		// A pool kept full from the start holds as many connections, and
		// buffers, when the heap is first measured as at the end.
		c := redistest.NewClient(t, &redis.Options{
			Addr:         p.Addr(),
			DialTimeout:  time.Second,
			PoolSize:     redisPool,
			MinIdleConns: redisPool,
		})
		storeOpts := []redisstore.Option{redisstore.WithPrefix("soak:"), redisstore.WithLogger(logs.logger())}
		opts := []idempotency.Option{
			idempotency.WithLease(soakLease),
			idempotency.WithStoreTimeout(soakStoreTimeout),
			idempotency.WithExpiry(soakExpiry),
			idempotency.WithLogger(logs.logger()),
		}
		switch i {
		case 1:
			storeOpts = append(storeOpts, redisstore.WithLocalCache(4096))
		case 2:
			opts = append(opts, idempotency.WithWait(soakWait))
		}
		store := redisstore.New(c, storeOpts...)
		h := withSlot(httpmw.New(observe(store, led), opts...)(newHandler(i, led, timing)))
		srv := httptest.NewUnstartedServer(h)
		srv.Config.ErrorLog = log.New(srvLog, "", 0)
		srv.Start()
		e.proxies = append(e.proxies, p)
		e.clients = append(e.clients, c)
		e.stores = append(e.stores, store)
		e.servers = append(e.servers, srv)
		e.urls = append(e.urls, srv.URL)
	}
	e.transport = &http.Transport{MaxIdleConnsPerHost: soakClients, IdleConnTimeout: time.Minute}
	t.Cleanup(e.close)
	return e
}

// close shuts everything down, from the servers inwards, and waits until
// each part has stopped. It may be called more than once.
func (e *soakEnv) close() {
	e.once.Do(func() {
		for _, srv := range e.servers {
			srv.Close()
		}
		e.transport.CloseIdleConnections()
		for _, s := range e.stores {
			_ = s.Close()
		}
		for _, c := range e.clients {
			_ = c.Close()
		}
		for _, p := range e.proxies {
			p.Close()
		}
		e.redis.Kill()
	})
}

// heap returns the live heap and the heap in use after a full collection.
func heap() (alloc, inuse uint64) {
	// The second collection frees what the first one's finalizers and
	// emptied pools let go.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.HeapInuse
}

// TestSoak runs the soak and fault test that the package doc describes.
func TestSoak(t *testing.T) {
	d := soakDuration(t)
	// Not parallel: the goroutine and heap figures are the whole process's.
	ignore := goleak.IgnoreCurrent()
	seed := rand.Uint64()
	t.Logf("soak test: %v of load, seed %d", d, seed)

	led := newLedger(soakLease)
	logs := newLogCounter()
	var srvLog serverLog
	env := startEnv(t, led, logs, &srvLog)
	pool := &keyPool{led: led}
	s := &sender{urls: env.urls, client: &http.Client{Transport: env.transport}, led: led, timeout: requestTimeout}
	rng := rand.New(rand.NewPCG(seed, seed>>1))

	// One request per instance first, and every pool full, so that the heap
	// measured next holds what the instances need to run at all.
	for in := range env.urls {
		o := s.send(t.Context(), pool.newKey(behaviourNormal, rng), in, requestTimeout, false)
		require.Equal(t, http.StatusCreated, o.status, "warm-up request to instance %d", in)
	}
	require.Eventually(t, func() bool {
		for _, c := range env.clients {
			if c.PoolStats().IdleConns < redisPool {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "Redis connection pools filled")
	heapStart, inuseStart := heap()

	start := time.Now()
	load, stopLoad := context.WithDeadline(t.Context(), start.Add(d))
	var clients sync.WaitGroup
	for i := range soakClients {
		clients.Go(func() { runClient(load, t.Context(), s, pool, defaultClient, seed+uint64(i)) })
	}
	// Registered after the environment's clean-up, so that it runs first
	// if the test ends early.
	t.Cleanup(func() {
		stopLoad()
		clients.Wait()
	})

	inj := &injector{redis: env.redis, proxies: env.proxies, led: led, lease: soakLease, storeTimeout: soakStoreTimeout, rng: rng}
	inj.run(start.Add(d))
	inj.heal()
	<-load.Done()
	clients.Wait()
	idle, cancelIdle := context.WithTimeout(t.Context(), idleTimeout)
	defer cancelIdle()
	require.NoError(t, led.waitIdle(idle), "handlers still running after the load")
	loadTime := time.Since(start)

	// Every instance must replay a sample of the stored keys, once the
	// faults are over.
	logsBefore, _ := led.snapshot()
	before := analyse(logsBefore, inj.faults, soakLease)
	var sample []*soakKey
	for _, k := range pool.keys {
		if _, ok := before.stored[k.id]; ok {
			sample = append(sample, k)
		}
	}
	rng.Shuffle(len(sample), func(i, j int) { sample[i], sample[j] = sample[j], sample[i] })
	sample = sample[:min(len(sample), sweepKeys)]
	sweepCtx, cancelSweep := context.WithTimeout(t.Context(), sweepTimeout)
	defer cancelSweep()
	swept := sweep(sweepCtx, s, sample, before.stored)
	require.NoError(t, led.waitIdle(idle), "handlers still running after the sweep")

	keyLogs, store := led.snapshot()
	v := analyse(keyLogs, inj.faults, soakLease)
	storedBytes := v.storedBytes

	// The heap is measured with the instances up and idle, and without
	// what the test itself recorded: what is left is what the library
	// keeps.
	// The locals that hold records are dead by now, which the collector
	// knows; the fields are not.
	led.discard()
	pool.keys = nil
	v.stored = nil
	env.transport.CloseIdleConnections()
	heapEnd, inuseEnd := heap()
	heapBound := 2*heapStart + uint64(storedBytes)

	env.close()
	leaks := 0
	leakErr := goleak.Find(ignore)
	if leakErr != nil {
		leaks = max(strings.Count(leakErr.Error(), "Goroutine "), 1)
	}
	logLines, rawKeys := logs.lines()

	faults, faultTime := inj.counts()
	rows := [][2]string{
		{"load", fmt.Sprintf("%v (%d instances, %d clients, lease %v, store timeout %v)", loadTime.Round(time.Millisecond), soakInstances, soakClients, soakLease, soakStoreTimeout)},
		{"requests", strconv.Itoa(v.requests)},
		{"duplicates (key sent before)", strconv.Itoa(v.duplicates)},
		{"replays", strconv.Itoa(v.replays)},
		{"status codes", statusLine(v.statuses)},
		{"client deadlines / transport errors", fmt.Sprintf("%d / %d", v.cancelled, v.transportErrors)},
		{"keys / keys stored", fmt.Sprintf("%d / %d", v.keys, v.storedKeys)},
		{"executions", strconv.Itoa(v.executionsTotal)},
	}
	for _, o := range []outcome{outcomeJSON, outcomeText, outcomePanic, outcomeCancelled} {
		rows = append(rows, [2]string{"  " + o.String(), strconv.Itoa(v.executions[o])})
	}
	rows = append(rows,
		[2]string{"  JSON stored after its client left", strconv.Itoa(v.storedAfterClientLeft)},
		[2]string{"faults injected", strconv.Itoa(len(inj.faults))},
	)
	for _, k := range faultKinds {
		line := strconv.Itoa(faults[k])
		if k != faultCut && faults[k] > 0 {
			line += fmt.Sprintf(" (%v each on average)", (faultTime[k] / time.Duration(faults[k])).Round(time.Millisecond))
		}
		rows = append(rows, [2]string{"  " + string(k), line})
	}
	rows = append(rows,
		[2]string{"claims", fmt.Sprintf("%v", store.claims)},
		[2]string{"renewals (failed, leases lost)", fmt.Sprintf("%d (%d, %d)", store.renewals, store.renewFailures, store.leasesLost)},
		[2]string{"completions (stored, not held, failed)", fmt.Sprintf("%d, %d, %d", store.completes[completionStored], store.completes[completionNotHeld], store.completes[completionFailed])},
		[2]string{"releases (failed)", fmt.Sprintf("%d (%d)", store.releases, store.releaseErrors)},
	)
	doubles := 0
	for _, n := range v.doubles {
		doubles += n
	}
	rows = append(rows, [2]string{"double executions", strconv.Itoa(doubles)})
	for _, c := range doubleCauses {
		rows = append(rows, [2]string{"  " + string(c), strconv.Itoa(v.doubles[c])})
	}
	notStored := 0
	for _, n := range v.notStored {
		notStored += n
	}
	rows = append(rows, [2]string{"JSON answers not stored (a retry may run again)", strconv.Itoa(notStored)})
	for _, c := range doubleCauses {
		if v.notStored[c] > 0 {
			rows = append(rows, [2]string{"  " + string(c), strconv.Itoa(v.notStored[c])})
		}
	}
	rows = append(rows,
		[2]string{"JSON answers stored although Complete said not (not held, failed)", fmt.Sprintf("%d, %d", v.storedUnreported[completionNotHeld], v.storedUnreported[completionFailed])},
		[2]string{"double executions outside the dead-holder cases", strconv.Itoa(doubles - v.doubles[causeDeadHolder] - v.doubles[causeRedisDown])},
		[2]string{"runs after the response was stored (must be 0)", strconv.Itoa(v.ranAfterStored + v.lostByRestart)},
		[2]string{"keys with differing 2xx bodies: explained / not (must be 0)", fmt.Sprintf("%d / %d", v.mismatchedExplained, v.mismatchedUnexplained)},
		[2]string{"answers not the key's stored response (must be 0)", strconv.Itoa(v.badAnswers)},
		[2]string{"outcomes settled against the SPEC (must be 0)", strconv.Itoa(v.wrongSettle)},
		[2]string{"sweep: keys, requests, not replayed (must be 0)", fmt.Sprintf("%d, %d, %d", swept.keys, swept.requests, swept.notReplayed)},
		[2]string{"panics logged by net/http", strconv.Itoa(int(srvLog.panics.Load()))},
		[2]string{"library log lines carrying a key (must be 0)", strconv.Itoa(rawKeys)},
		[2]string{"goroutine leaks (must be 0)", strconv.Itoa(leaks)},
		[2]string{"heap alloc start / end / bound", fmt.Sprintf("%s / %s / %s (stored records ~%s)", mib(heapStart), mib(heapEnd), mib(heapBound), mib(uint64(storedBytes)))},
		[2]string{"heap in use start / end", fmt.Sprintf("%s / %s", mib(inuseStart), mib(inuseEnd))},
	)
	t.Logf("soak summary:\n%s", table(rows))
	if len(v.notes) > 0 {
		t.Logf("double executions outside the dead-holder cases:\n  %s", strings.Join(v.notes, "\n  "))
	}
	t.Logf("library log messages:\n%s", strings.Join(logLines, "\n"))

	assert.Zero(t, v.failures(), "the library broke its promise %d times; first ones:\n%s", v.problemCount, strings.Join(v.problems, "\n"))
	assert.Zero(t, swept.notReplayed, "stored keys not replayed by every instance after the faults:\n%s", strings.Join(swept.examples, "\n"))
	assert.Zero(t, store.unattributed, "store calls not tied to an execution: the analysis is incomplete")
	assert.Zero(t, rawKeys, "library log lines carrying a client's key")
	assert.NoError(t, leakErr, "goroutines left after shutdown")
	assert.LessOrEqual(t, heapEnd, heapBound, "live heap after the run exceeds twice its start plus the stored records")

	// A run that exercised nothing proves nothing.
	assert.Greater(t, v.requests, 100, "requests")
	assert.Positive(t, v.replays, "replays")
	assert.Positive(t, v.duplicates, "duplicates")
	if d >= 20*time.Second {
		for _, k := range faultKinds {
			assert.Positive(t, faults[k], "faults of kind %q", k)
		}
		for _, o := range []outcome{outcomeJSON, outcomeText, outcomePanic, outcomeCancelled} {
			assert.Positive(t, v.executions[o], "executions with outcome %v", o)
		}
	}
}

// statusLine renders status counts in order.
func statusLine(statuses map[int]int) string {
	codes := make([]int, 0, len(statuses))
	for c := range statuses {
		codes = append(codes, c)
	}
	slices.Sort(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%d: %d", c, statuses[c])
	}
	return strings.Join(parts, ", ")
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

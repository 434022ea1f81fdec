package loadtest_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/loadtest"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const (
	// clients is how many requests are in flight at once.
	clients = 64
	// hotKeys is how many keys the replay benchmarks cycle through.
	hotKeys = 16
	// poolSize is the go-redis pool of the guarded and the baseline paths:
	// a connection for every client, so that neither waits for the pool.
	poolSize = clients
)

// keys hands out request keys: fresh ones, or the hot ones in turn.
type keys struct {
	prefix string
	n      atomic.Uint64
	hot    []string
}

func newKeys() *keys {
	k := &keys{prefix: "loadtest-" + rand.Text()[:12] + "-"}
	for i := range hotKeys {
		k.hot = append(k.hot, k.prefix+"hot-"+strconv.Itoa(i))
	}
	return k
}

func (k *keys) fresh() string {
	return k.prefix + strconv.FormatUint(k.n.Add(1), 10)
}

func (k *keys) nextHot() string {
	return k.hot[k.n.Add(1)%hotKeys]
}

// loadClient is an HTTP client that keeps a connection for every client.
type loadClient struct {
	w      *loadtest.Workload
	url    string
	client *http.Client
}

// serve starts a server of h, which answers w's requests.
func serve(b *testing.B, w *loadtest.Workload, h http.Handler) *loadClient {
	b.Helper()
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	tr := &http.Transport{MaxIdleConns: 2 * clients, MaxIdleConnsPerHost: 2 * clients, IdleConnTimeout: time.Minute}
	b.Cleanup(tr.CloseIdleConnections)
	return &loadClient{w: w, url: srv.URL, client: &http.Client{Transport: tr}}
}

// post sends one request with key and checks the answer.
func (lc *loadClient) post(key string, wantReplay bool) error {
	return lc.w.Post(context.Background(), lc.client, lc.url, key, wantReplay)
}

// warmUp sends a round of concurrent requests, so that the connections are
// open before the clock starts.
func (lc *loadClient) warmUp(b *testing.B, key func() string, wantReplay bool) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() { errs[i] = lc.post(key(), wantReplay) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// run sends b.N requests from clients goroutines and reports requests per
// second. On a shared machine, whose load sways the throughput, it also
// reports the CPU time spent per request by this process (clients and
// server together: "cpu-ns/op") and, when c is not nil, by Redis
// ("redis-cpu-ns/op"), which tell the cost of a request apart from the
// share of the machine the run got.
func (lc *loadClient) run(b *testing.B, c *redis.Client, key func() string, wantReplay bool) {
	b.Helper()
	lc.warmUp(b, key, wantReplay)
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	cpuBefore, cpuOK := processCPU()
	redisBefore, redisOK := redisCPU(c)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := lc.post(key(), wantReplay); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	if cpuAfter, ok := processCPU(); ok && cpuOK {
		b.ReportMetric(float64(cpuAfter-cpuBefore)/float64(b.N), "cpu-ns/op")
	}
	if redisAfter, ok := redisCPU(c); ok && redisOK {
		b.ReportMetric(float64(redisAfter-redisBefore)/float64(b.N), "redis-cpu-ns/op")
	}
}

// redisCPU returns the CPU time the Redis server has used, from INFO cpu,
// and whether it could tell.
func redisCPU(c *redis.Client) (time.Duration, bool) {
	if c == nil {
		return 0, false
	}
	info, err := c.Info(context.Background(), "cpu").Result()
	if err != nil {
		return 0, false
	}
	var total time.Duration
	found := 0
	for line := range strings.Lines(info) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "used_cpu_sys" && name != "used_cpu_user") {
			continue
		}
		secs, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return 0, false
		}
		total += time.Duration(secs * float64(time.Second))
		found++
	}
	return total, found == 2
}

// BenchmarkLoopback: see the package documentation.
func BenchmarkLoopback(b *testing.B) {
	mw := loadtest.Middleware()
	b.Run("Bare", func(b *testing.B) {
		k := newKeys()
		serve(b, mw, mw.Bare()).run(b, nil, k.fresh, false)
	})
	b.Run("Baseline", func(b *testing.B) {
		r := loadtest.NewRedis(b, poolSize)
		k := newKeys()
		serve(b, mw, mw.Around(r.Baseline(b, mw))).run(b, r.Client, k.fresh, false)
	})
	b.Run("First", func(b *testing.B) {
		r := loadtest.NewRedis(b, poolSize)
		k := newKeys()
		serve(b, mw, mw.Guard(r.Store(b), r.Options()...)).run(b, r.Client, k.fresh, false)
	})
	replay := func(b *testing.B, storeOpts ...redisstore.Option) {
		r := loadtest.NewRedis(b, poolSize)
		k := newKeys()
		lc := serve(b, mw, mw.Guard(r.Store(b, storeOpts...), r.Options()...))
		for _, key := range k.hot {
			if err := lc.post(key, false); err != nil {
				b.Fatal(err)
			}
		}
		lc.run(b, r.Client, k.nextHot, true)
	}
	b.Run("Replay", func(b *testing.B) { replay(b) })
	b.Run("ReplayLocalCache", func(b *testing.B) { replay(b, redisstore.WithLocalCache(1000)) })
	b.Run("NoKey", func(b *testing.B) {
		// The middleware looks for another header, so that the requests
		// carry the same headers as the others and still have no key.
		r := loadtest.NewRedis(b, poolSize)
		k := newKeys()
		h := mw.Guard(r.Store(b), append(r.Options(), idempotency.WithIdempotencyHeader("X-Other-Key"))...)
		serve(b, mw, h).run(b, r.Client, k.fresh, false)
	})
}

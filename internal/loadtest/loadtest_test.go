package loadtest_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
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
	"github.com/idemkey/idempotency/httpmw"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

func TestMain(m *testing.M) { redistest.Main(m) }

const (
	// clients is how many requests are in flight at once.
	clients = 64
	// hotKeys is how many keys the replay benchmarks cycle through.
	hotKeys = 16
	// expiry is the records' expiry, on both the guarded and the baseline
	// path, short so that Redis lets go of them soon after a run.
	expiry = time.Minute
	// poolSize is the go-redis pool of both paths: a connection for every
	// client, so that neither waits for the pool.
	poolSize = clients
)

var (
	requestBody  = []byte(`{"amount":10}`)
	responseBody = []byte(`{"id":42}`)
)

// handler is the work every benchmark's requests do: read the body, answer
// 201 with a small JSON body.
func handler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(responseBody)
}

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

// newRedis returns a client of the benchmarks' Redis with the options both
// paths share, and a key prefix of this benchmark's own.
func newRedis(b *testing.B) (*redis.Client, string) {
	b.Helper()
	c := redistest.NewClient(b, &redis.Options{Addr: redistest.Addr(b), PoolSize: poolSize})
	return c, redistest.Prefix(b, c)
}

// guarded returns the middleware over a redisstore on c, around handler.
func guarded(b *testing.B, c *redis.Client, prefix string, storeOpts []redisstore.Option, opts ...idempotency.Option) http.Handler {
	b.Helper()
	s := redisstore.New(c, append([]redisstore.Option{redisstore.WithPrefix(prefix)}, storeOpts...)...)
	b.Cleanup(func() { _ = s.Close() })
	// A long store timeout lets an overloaded machine slow a run down
	// rather than fail it with 503s: the baseline has no timeout either.
	opts = append([]idempotency.Option{idempotency.WithExpiry(expiry), idempotency.WithStoreTimeout(time.Minute)}, opts...)
	return httpmw.New(s, opts...)(http.HandlerFunc(handler))
}

// loadClient is an HTTP client that keeps a connection for every client.
type loadClient struct {
	url    string
	client *http.Client
}

func serve(b *testing.B, h http.Handler) *loadClient {
	b.Helper()
	srv := httptest.NewServer(h)
	b.Cleanup(srv.Close)
	tr := &http.Transport{MaxIdleConns: 2 * clients, MaxIdleConnsPerHost: 2 * clients, IdleConnTimeout: time.Minute}
	b.Cleanup(tr.CloseIdleConnections)
	return &loadClient{url: srv.URL + "/payments", client: &http.Client{Transport: tr}}
}

// post sends one request with key and checks the answer.
func (lc *loadClient) post(key string, wantReplay bool) error {
	req, err := http.NewRequest(http.MethodPost, lc.url, bytes.NewReader(requestBody))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := lc.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated || !bytes.Equal(body, responseBody) {
		return fmt.Errorf("loadtest: answer %d %q", resp.StatusCode, body)
	}
	if replayed := resp.Header.Get("Idempotent-Replayed") == "true"; replayed != wantReplay {
		return fmt.Errorf("loadtest: replayed is %v, want %v", replayed, wantReplay)
	}
	return nil
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

// recordShape runs one first execution through the middleware and returns
// the length of the Redis key and of the value it stored, which the
// baseline's round trips then carry.
func recordShape(b *testing.B, c *redis.Client) (keyLen, valueLen int) {
	b.Helper()
	prefix := redistest.Prefix(b, c)
	lc := serve(b, guarded(b, c, prefix, nil))
	if err := lc.post("shape", false); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	found, err := c.Keys(ctx, prefix+"*").Result()
	if err != nil || len(found) != 1 {
		b.Fatalf("loadtest: the record's key: %v %v", found, err)
	}
	n, err := c.StrLen(ctx, found[0]).Result()
	if err != nil {
		b.Fatal(err)
	}
	return len(found[0]), int(n)
}

// baseline is the handler plus two plain round trips with the middleware's
// sizes: a GET of the key, as a claim finds it free, and a SET of a
// record-sized value with the expiry, as a completion stores it.
func baseline(c *redis.Client, prefix string, keyLen, valueLen int) http.Handler {
	value := bytes.Repeat([]byte{'d'}, valueLen)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := prefix + r.Header.Get("Idempotency-Key")
		if pad := keyLen - len(key); pad > 0 {
			key += strings.Repeat("x", pad)
		}
		ctx := r.Context()
		if err := c.Get(ctx, key).Err(); !errors.Is(err, redis.Nil) {
			http.Error(w, fmt.Sprint("GET: ", err), http.StatusInternalServerError)
			return
		}
		if err := c.Set(ctx, key, value, expiry).Err(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		handler(w, r)
	})
}

// BenchmarkLoopback: see the package documentation.
func BenchmarkLoopback(b *testing.B) {
	b.Run("Bare", func(b *testing.B) {
		k := newKeys()
		serve(b, http.HandlerFunc(handler)).run(b, nil, k.fresh, false)
	})
	b.Run("Baseline", func(b *testing.B) {
		c, prefix := newRedis(b)
		keyLen, valueLen := recordShape(b, c)
		k := newKeys()
		serve(b, baseline(c, prefix, keyLen, valueLen)).run(b, c, k.fresh, false)
	})
	b.Run("First", func(b *testing.B) {
		c, prefix := newRedis(b)
		k := newKeys()
		serve(b, guarded(b, c, prefix, nil)).run(b, c, k.fresh, false)
	})
	replay := func(b *testing.B, storeOpts ...redisstore.Option) {
		c, prefix := newRedis(b)
		k := newKeys()
		lc := serve(b, guarded(b, c, prefix, storeOpts))
		for _, key := range k.hot {
			if err := lc.post(key, false); err != nil {
				b.Fatal(err)
			}
		}
		lc.run(b, c, k.nextHot, true)
	}
	b.Run("Replay", func(b *testing.B) { replay(b) })
	b.Run("ReplayLocalCache", func(b *testing.B) { replay(b, redisstore.WithLocalCache(1000)) })
	b.Run("NoKey", func(b *testing.B) {
		// The middleware looks for another header, so that the requests
		// carry the same headers as the others and still have no key.
		c, prefix := newRedis(b)
		k := newKeys()
		h := guarded(b, c, prefix, nil, idempotency.WithIdempotencyHeader("X-Other-Key"))
		serve(b, h).run(b, c, k.fresh, false)
	})
}

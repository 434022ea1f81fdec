// Package redistest finds or starts real Redis servers for tests: a server
// shared by a test binary, servers of a test's own that it can stop and
// restart, and three-master Redis Clusters. It never imitates Redis.
//
// Tests that only need "a Redis" call [Client] (or [Addr]): it uses the
// server at REDIS_ADDR when that is set, and otherwise one throwaway
// redis-server per test binary, started on first use on a free loopback
// port. A package whose tests use it calls [Main] from TestMain, so that
// the throwaway server stops when the tests end. Tests share that server,
// so each keeps to the keys under its own [Prefix].
//
// When redis-server is not installed, tests that need it skip with a loud
// message, or fail when IDEMPOTENCY_REQUIRE_REDIS=1, as CI sets it.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// EnvAddr names the variable that points tests at an existing Redis, as
	// host:port or a redis:// URL. Only tests that need no server of their
	// own use it.
	EnvAddr = "REDIS_ADDR"
	// EnvRequire names the variable that, set to 1, turns a missing
	// redis-server into a test failure instead of a skip.
	EnvRequire = "IDEMPOTENCY_REQUIRE_REDIS"
	// EnvLog names the variable that, set to 1, keeps go-redis's own log
	// lines in tests that call [Main].
	EnvLog = "IDEMPOTENCY_REDIS_LOG"
)

// discardLogger drops go-redis's log lines.
type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// lookPath finds a Redis program, or skips (or fails) the test when it is
// not installed.
func lookPath(tb testing.TB, name string) (string, error) {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path, nil
	}
	msg := fmt.Sprintf("%s not found on PATH; install the redis-server package "+
		"(Debian/Ubuntu: apt-get install redis-server) or set %s", name, EnvAddr)
	if os.Getenv(EnvRequire) == "1" {
		tb.Fatalf("redistest: %s=1 and %s", EnvRequire, msg)
	}
	tb.Skipf("SKIPPING: %s", msg)
	return "", errors.New(msg) // not reached: Skipf ends the test
}

var shared struct {
	mu     sync.Mutex
	opts   *redis.Options // nil until the first test asks
	server *Server
	dir    string
}

// sharedOptions returns the options for the Redis shared by the tests of
// this binary, starting a throwaway server on first use.
func sharedOptions(tb testing.TB) *redis.Options {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.opts != nil {
		return shared.opts
	}
	if addr := os.Getenv(EnvAddr); addr != "" {
		opts := &redis.Options{Addr: addr}
		if strings.Contains(addr, "://") {
			var err error
			if opts, err = redis.ParseURL(addr); err != nil {
				tb.Fatalf("redistest: %s: %v", EnvAddr, err)
			}
		}
		shared.opts = opts
		return opts
	}
	dir, err := os.MkdirTemp("", "redistest-") //nolint:usetesting // the shared server outlives the test that starts it
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	// The shared server outlives the test that started it: it gets a
	// handle of its own, whose failures surface in [Main].
	s, err := startOnFreePort(tb, dir, false, nil)
	if err != nil {
		_ = os.RemoveAll(dir)
		tb.Fatalf("redistest: shared server: %v", err)
	}
	shared.server, shared.dir = s, dir
	shared.opts = &redis.Options{Addr: s.Addr()}
	return shared.opts
}

// Addr returns the address of the Redis shared by the tests of this binary:
// REDIS_ADDR when it is set, otherwise a throwaway server started on first
// use.
func Addr(tb testing.TB) string {
	tb.Helper()
	return sharedOptions(tb).Addr
}

// Client returns a new client of the Redis shared by the tests of this
// binary (see [Addr]), with ContextTimeoutEnabled, closed when the test ends.
func Client(tb testing.TB) *redis.Client {
	tb.Helper()
	opts := *sharedOptions(tb)
	return NewClient(tb, &opts)
}

// NewClient returns a client with the given options and ContextTimeoutEnabled
// set, closed when the test ends.
func NewClient(tb testing.TB, opts *redis.Options) *redis.Client {
	tb.Helper()
	o := *opts
	o.ContextTimeoutEnabled = true
	c := redis.NewClient(&o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Main runs the tests and then stops the shared server, if one was started,
// and exits. Call it from TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// Without it, the shared server is killed when the test binary exits (on
// Linux), and its temporary folder stays behind.
//
// Main also silences go-redis's own logger, which otherwise writes every
// refused connection of a test that stops Redis on purpose to the test
// binary's standard error; set IDEMPOTENCY_REDIS_LOG=1 to see it.
//
// Each of also runs after the tests, for a package whose tests use other
// servers too:
//
//	func TestMain(m *testing.M) { redistest.Main(m, pgtest.TearDown) }
func Main(m *testing.M, also ...func() error) {
	if os.Getenv(EnvLog) != "1" {
		redis.SetLogger(discardLogger{})
	}
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintln(os.Stderr, "redistest:", err)
		if code == 0 {
			code = 1
		}
	}
	for _, tearDown := range also {
		if err := tearDown(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

func stopShared() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	s, dir := shared.server, shared.dir
	shared.server, shared.dir, shared.opts = nil, "", nil
	if s == nil {
		return nil
	}
	err := s.stop(syscall.SIGKILL)
	return errors.Join(err, os.RemoveAll(dir))
}

// Prefix returns a key prefix that no other test uses, such as
// "redistest:3f9a0c1d2e4b5a69:", and deletes every key under it from c when
// the test ends. It has no hash tag, so that a Cluster spreads the keys.
func Prefix(tb testing.TB, c redis.UniversalClient) string {
	tb.Helper()
	prefix := "redistest:" + randomHex(8) + ":"
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := deletePrefix(ctx, c, prefix); err != nil {
			tb.Logf("redistest: delete keys under %s: %v", prefix, err)
		}
	})
	return prefix
}

func deletePrefix(ctx context.Context, c redis.UniversalClient, prefix string) error {
	del := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, prefix+"*", 1000).Result()
			if err != nil {
				return err
			}
			// One DEL per key, pipelined: keys under one prefix lie in
			// many Cluster slots.
			if len(keys) > 0 {
				_, err := node.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range keys {
						p.Del(ctx, k)
					}
					return nil
				})
				if err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if cc, ok := c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return del(ctx, node)
		})
	}
	return del(ctx, c)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails, by its documentation
	return hex.EncodeToString(b)
}

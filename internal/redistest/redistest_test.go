package redistest_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestSharedClient(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	prefix := redistest.Prefix(t, c)
	require.NoError(t, c.Set(t.Context(), prefix+"k", "v", 0).Err())
	got, err := c.Get(t.Context(), prefix+"k").Result()
	require.NoError(t, err)
	assert.Equal(t, "v", got)
	assert.True(t, c.Options().ContextTimeoutEnabled)
	assert.Equal(t, redistest.Addr(t), c.Options().Addr, "every test shares one server")
}

func TestPrefixDeletesItsKeys(t *testing.T) { //nolint:tparallel // the subtest must end (and clean up) before the check
	t.Parallel()
	c := redistest.Client(t)
	var prefix string
	t.Run("writer", func(t *testing.T) {
		prefix = redistest.Prefix(t, c)
		for _, k := range []string{"a", "b", "c"} {
			require.NoError(t, c.Set(t.Context(), prefix+k, "v", 0).Err())
		}
	})
	n, err := c.Exists(t.Context(), prefix+"a", prefix+"b", prefix+"c").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "keys under the prefix must be gone after the test that made them")
}

func TestServerStopStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     []redistest.ServerOption
		stop     func(*redistest.Server)
		wantKept bool
	}{
		{name: "stop without persistence", stop: (*redistest.Server).Stop, wantKept: false},
		{name: "kill without persistence", stop: (*redistest.Server).Kill, wantKept: false},
		{name: "kill with append-only file", opts: []redistest.ServerOption{redistest.WithAppendOnly()}, stop: (*redistest.Server).Kill, wantKept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := redistest.StartServer(t, tt.opts...)
			c := s.Client(t)
			require.NoError(t, c.Set(t.Context(), "k", "v", 0).Err())
			addr := s.Addr()

			tt.stop(s)
			assert.Error(t, c.Ping(t.Context()).Err(), "a stopped server must not answer")

			s.Start()
			assert.Equal(t, addr, s.Addr(), "a restarted server keeps its port")
			got, err := c.Get(t.Context(), "k").Result()
			if tt.wantKept {
				require.NoError(t, err)
				assert.Equal(t, "v", got)
			} else {
				assert.ErrorIs(t, err, redis.Nil)
			}
		})
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	t.Logf("cluster started in %v", cl.StartTime)
	require.Len(t, cl.Servers, 3)
	c := cl.Client(t)
	prefix := redistest.Prefix(t, c)

	// Keys under one prefix must land on every master.
	for i := range 100 {
		require.NoError(t, c.Set(t.Context(), prefix+strings.Repeat("k", i+1), "v", time.Minute).Err())
	}
	var masters atomic.Int32
	require.NoError(t, c.ForEachMaster(t.Context(), func(ctx context.Context, node *redis.Client) error {
		n, err := node.DBSize(ctx).Result()
		if err == nil && n > 0 {
			masters.Add(1)
		}
		return err
	}))
	assert.Equal(t, int32(3), masters.Load(), "keys must spread over the three masters")
}

func TestCounter(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	n := redistest.NewCounter(c)
	prefix := redistest.Prefix(t, c)
	ctx := t.Context()

	require.NoError(t, c.Set(ctx, prefix+"k", "v", 0).Err()) // dials: HELLO and CLIENT SETINFO are not counted
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Get(ctx, prefix+"k")
		p.Get(ctx, prefix+"k")
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"set", "pipeline(get get)"}, n.Names())
	assert.Equal(t, 2, n.Count())
	n.Reset()
	assert.Zero(t, n.Count())
}

func TestSkipsWithoutRedisServer(t *testing.T) {
	// Not parallel: it empties PATH for the whole process.
	t.Setenv("PATH", "")
	t.Setenv(redistest.EnvRequire, "")
	var sub *testing.T
	reached := false
	t.Run("no redis-server", func(t *testing.T) {
		sub = t
		redistest.StartServer(t)
		reached = true
	})
	assert.True(t, sub.Skipped(), "a missing redis-server must skip the test")
	assert.False(t, reached)
}

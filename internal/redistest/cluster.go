package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterTimeout bounds how long a new cluster may take to agree that it is
// whole.
const clusterTimeout = 30 * time.Second

// Cluster is a Redis Cluster of three masters without replicas, each a
// [Server] of the test's own.
type Cluster struct {
	// Servers are the masters, in the order that they were started.
	Servers []*Server
	// StartTime is how long the cluster took to start and agree that it is
	// whole.
	StartTime time.Duration
}

// StartCluster starts a three-master Redis Cluster and stops it when the
// test ends. It returns once every node reports cluster_state:ok. Each node
// has an explicit free cluster bus port, since the default (the port plus
// 10000) does not exist above 55535. It skips the test, or fails it under
// IDEMPOTENCY_REQUIRE_REDIS=1, when redis-server or redis-cli is not
// installed.
func StartCluster(tb testing.TB) *Cluster {
	tb.Helper()
	start := time.Now()
	cli, err := lookPath(tb, "redis-cli")
	if err != nil {
		tb.Fatalf("redistest: %v", err)
	}
	c := &Cluster{}
	for i := range 3 {
		s, err := startOnFreePort(tb, tb.TempDir(), true, []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes-" + strconv.Itoa(i) + ".conf",
			"--cluster-node-timeout", "5000",
		})
		if err != nil {
			tb.Fatalf("redistest: cluster node %d: %v", i, err)
		}
		tb.Cleanup(s.shutdown)
		c.Servers = append(c.Servers, s)
	}

	args := []string{"--cluster", "create"}
	args = append(args, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, s := range c.Servers {
		if err := waitClusterOK(ctx, s.Addr()); err != nil {
			tb.Fatalf("redistest: cluster node %s: %v\n%s", s.Addr(), err, readLog(s.Dir()))
		}
	}
	c.StartTime = time.Since(start)
	return c
}

// Addrs returns the masters' addresses.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Servers))
	for i, s := range c.Servers {
		addrs[i] = s.Addr()
	}
	return addrs
}

// Client returns a new Cluster client of the cluster, with
// ContextTimeoutEnabled, closed when the test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 c.Addrs(),
		ContextTimeoutEnabled: true,
	})
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

func waitClusterOK(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer c.Close()
	var last string
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = firstLine(info, "cluster_state:")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ok within %v (last: %s)", clusterTimeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func firstLine(text, prefix string) string {
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, prefix) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

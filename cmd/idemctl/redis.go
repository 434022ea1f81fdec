package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency/store/redisstore"
)

// openRedis opens the Redis store at url, redis://[user:password@]host:port/db
// (or rediss:// for TLS), under prefix.
func openRedis(ctx context.Context, url, prefix string, stderr io.Writer) (*backend, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, usagef("-redis: %v", err)
	}
	opts.ContextTimeoutEnabled = true
	client := redis.NewClient(opts)
	name := fmt.Sprintf("Redis at %s, database %d, prefix %q", opts.Addr, opts.DB, prefix)
	return redisBackend(ctx, client, name, prefix, stderr)
}

// openRedisCluster opens the Redis Cluster store at addrs, either
// host:port,host:port or a URL that redis.ParseClusterURL reads
// (redis://user:password@host:port?addr=host:port), under prefix.
func openRedisCluster(ctx context.Context, addrs, prefix string, stderr io.Writer) (*backend, error) {
	opts := &redis.ClusterOptions{}
	if strings.Contains(addrs, "://") {
		var err error
		if opts, err = redis.ParseClusterURL(addrs); err != nil {
			return nil, usagef("-redis-cluster: %v", err)
		}
	} else {
		for _, addr := range strings.Split(addrs, ",") {
			if addr = strings.TrimSpace(addr); addr != "" {
				opts.Addrs = append(opts.Addrs, addr)
			}
		}
		if len(opts.Addrs) == 0 {
			return nil, usagef("-redis-cluster: no address")
		}
	}
	opts.ContextTimeoutEnabled = true
	client := redis.NewClusterClient(opts)
	name := fmt.Sprintf("Redis Cluster at %s, prefix %q", strings.Join(opts.Addrs, ","), prefix)
	return redisBackend(ctx, client, name, prefix, stderr)
}

func redisBackend(ctx context.Context, client redis.UniversalClient, name, prefix string, stderr io.Writer) (*backend, error) {
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store := redisstore.New(client, redisstore.WithPrefix(prefix), redisstore.WithLogger(logger))
	return &backend{
		store: store,
		name:  name,
		close: func() {
			_ = store.Close()
			_ = client.Close()
		},
	}, nil
}

package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/redisstore"
)

// openRedis connects to the Redis named by REDIS_URL (redis://host:port/db)
// or REDIS_ADDR (host:port), so that several instances share claims.
func openRedis(addr, url string, logger *slog.Logger) (idempotency.Store, string, func(), error) {
	opts := &redis.Options{Addr: addr}
	if url != "" {
		var err error
		if opts, err = redis.ParseURL(url); err != nil {
			return nil, "", nil, fmt.Errorf("REDIS_URL: %w", err)
		}
	}
	// Without it, go-redis ignores the store's per-call deadlines.
	opts.ContextTimeoutEnabled = true
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		return nil, "", nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
	}
	store := redisstore.New(client, redisstore.WithLogger(logger))
	return store, "Redis store at " + opts.Addr, func() {
		_ = store.Close()
		_ = client.Close()
	}, nil
}

package grpcmw_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	gatewayv1 "github.com/idemkey/idempotency/internal/gen/idemkey/gateway/v1"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
)

// TestExactlyOnceOverRedis sends 48 concurrent duplicates, spread over
// three servers that share one Redis, and checks that the handler ran once
// and that every answer is the first one, in flight or replayed.
func TestExactlyOnceOverRedis(t *testing.T) {
	const (
		servers    = 3
		duplicates = 48
		rounds     = 5
	)
	rdb := redistest.Client(t)
	prefix := redistest.Prefix(t, rdb)

	var calls atomic.Int64
	conns := make([]*grpc.ClientConn, servers)
	for i := range conns {
		srv := &chargeServer{create: func(_ context.Context, req *gatewayv1.CreateChargeRequest) (*gatewayv1.CreateChargeResponse, error) {
			n := calls.Add(1)
			return created(&gatewayv1.Charge{Id: fmt.Sprintf("ch_%d", n), AccountId: req.GetAccountId()}), nil
		}}
		// Each server has a store of its own over the one Redis.
		conns[i] = startGRPC(t, srv, redisstore.New(redistest.Client(t), redisstore.WithPrefix(prefix)))
	}

	for round := range rounds {
		before := calls.Load()
		key := fmt.Sprintf("round-%d", round)
		req := &gatewayv1.CreateChargeRequest{AccountId: "acct_1", AmountCents: int64(round)}
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			successes []*gatewayv1.CreateChargeResponse
			start     = make(chan struct{})
		)
		for i := range duplicates {
			wg.Go(func() {
				<-start
				ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", key)
				res, err := gatewayv1.NewChargeServiceClient(conns[i%servers]).CreateCharge(ctx, req)
				if err == nil {
					mu.Lock()
					successes = append(successes, res)
					mu.Unlock()
				}
			})
		}
		close(start)
		wg.Wait()
		require.Equal(t, before+1, calls.Load(), "round %d: the handler ran once", round)
		require.NotEmpty(t, successes)
		for _, s := range successes {
			assert.True(t, proto.Equal(successes[0], s), "round %d: every success is the first answer", round)
		}
		// After the first finished, every duplicate is a replay of it.
		ctx := metadata.AppendToOutgoingContext(t.Context(), "idempotency-key", key)
		for _, cc := range conns {
			var header metadata.MD
			res, err := gatewayv1.NewChargeServiceClient(cc).CreateCharge(ctx, req, grpc.Header(&header))
			require.NoError(t, err)
			assert.True(t, proto.Equal(successes[0], res))
			assert.Equal(t, []string{"true"}, header.Get("idempotent-replayed"))
		}
	}
}

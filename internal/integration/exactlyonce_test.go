package integration

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	"github.com/idemkey/idempotency"
	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	"github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1/paymentsv1connect"
	"github.com/idemkey/idempotency/internal/redistest"
)

const (
	// duplicates is how many copies of one request each round sends at
	// once, spread over the instances.
	duplicates = 48
	// rounds is how many rounds, each with a key of its own, run in a row.
	rounds = 5
	// holdTimeout bounds how long the executing handler waits for the
	// other requests to be answered. It only runs out when the handler ran
	// more than once (each run then waits for answers that never come),
	// and the test then fails on the count of runs.
	holdTimeout = 10 * time.Second
)

// overlap makes the duplicates of one round overlap its execution: the
// handler that runs holds its answer until every other request of the round
// has been answered, so that each of them met the claim in flight.
type overlap struct {
	others   atomic.Int64
	answered chan struct{} // closed when every other request has an answer
}

func newOverlap() *overlap { return &overlap{answered: make(chan struct{})} }

// done counts one answered request; the round's last but one closes
// answered, since the executing request is answered last.
func (o *overlap) done() {
	if o.others.Add(1) == duplicates-1 {
		close(o.answered)
	}
}

// hold blocks the executing handler until every other request is answered.
func (o *overlap) hold(ctx context.Context) {
	select {
	case <-o.answered:
	case <-time.After(holdTimeout):
	case <-ctx.Done():
	}
}

func TestExactlyOnceMiddleware(t *testing.T) {
	t.Parallel()
	clients := make([]redis.UniversalClient, 3)
	for i := range clients {
		clients[i] = redistest.Client(t)
	}
	exactlyOnceHTTP(t, clients)
}

func TestExactlyOnceInterceptor(t *testing.T) {
	t.Parallel()
	clients := make([]redis.UniversalClient, 2)
	for i := range clients {
		clients[i] = redistest.Client(t)
	}
	exactlyOnceConnect(t, clients)
}

// TestCluster runs the exactly-once and replay scenarios on a real
// three-master Redis Cluster, each instance with a Cluster client of its
// own.
func TestCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	cl := redistest.StartCluster(t)
	t.Logf("three-master cluster started in %v", cl.StartTime.Round(time.Millisecond))
	t.Cleanup(func() {
		t.Logf("cluster test ran for %v, cluster start included", time.Since(start).Round(time.Millisecond))
	})

	t.Run("Middleware", func(t *testing.T) {
		t.Parallel()
		clients := make([]redis.UniversalClient, 3)
		for i := range clients {
			clients[i] = cl.Client(t)
		}
		masters := exactlyOnceHTTP(t, clients)
		t.Logf("the rounds' keys lay on %d of the 3 masters", len(masters))
	})
	t.Run("Interceptor", func(t *testing.T) {
		t.Parallel()
		clients := make([]redis.UniversalClient, 2)
		for i := range clients {
			clients[i] = cl.Client(t)
		}
		exactlyOnceConnect(t, clients)
	})
}

// exactlyOnceHTTP runs middleware instances, one per client, each with a
// store of its own on that client, sharing one prefix. Each round sends
// [duplicates] copies of one request at once, round-robin over the
// instances: the handler runs once, every other copy gets 409, and then
// every instance replays the stored answer. On a Cluster it returns the
// masters that held the rounds' keys.
func exactlyOnceHTTP(t *testing.T, clients []redis.UniversalClient) map[string]bool {
	prefix := redistest.Prefix(t, clients[0])
	var (
		runs    atomic.Int64
		current atomic.Pointer[overlap]
	)
	handler := func(w http.ResponseWriter, r *http.Request) {
		run := runs.Add(1)
		current.Load().hold(r.Context())
		writeJSON(w, chargeJSON("http", run))
	}
	instances := make([]*httpInstance, len(clients))
	for i, c := range clients {
		instances[i] = startHTTP(t, newStore(t, c, prefix), handler)
	}

	masters := map[string]bool{}
	for round := range rounds {
		key := newKey()
		o := newOverlap()
		current.Store(o)
		before := runs.Load()

		answers := make([]answer, duplicates)
		errs := make([]error, duplicates)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range duplicates {
			wg.Go(func() {
				<-start
				answers[i], errs[i] = instances[i%len(instances)].send(t.Context(), key, chargeBody)
				o.done()
			})
		}
		close(start)
		wg.Wait()

		require.Equal(t, int64(1), runs.Load()-before, "round %d: the handler must run exactly once", round)
		var first answer
		executed, conflicts := 0, 0
		for i, a := range answers {
			if !assert.NoError(t, errs[i], "round %d, request %d", round, i) {
				continue
			}
			switch a.status {
			case http.StatusOK:
				executed++
				first = a
				assert.False(t, a.replayed(), "round %d: no replay can exist while the handler holds its answer", round)
			case http.StatusConflict:
				conflicts++
				assertConflict(t, a, "round %d, request %d", round, i)
			default:
				assert.Fail(t, "unexpected answer", "round %d, request %d: %v", round, i, a)
			}
		}
		assert.Equal(t, 1, executed, "round %d: one request executes", round)
		assert.Equal(t, duplicates-1, conflicts, "round %d: every other request meets the claim in flight", round)

		for i, in := range instances {
			assertReplayOf(t, first, in.post(t, key), "round %d, replay from instance %d", round, i)
		}
		assert.Equal(t, int64(1), runs.Load()-before, "round %d: replays do not run the handler", round)

		if cc, ok := clients[0].(*redis.ClusterClient); ok {
			for _, k := range redisKeysCluster(t, cc, prefix) {
				node, err := cc.MasterForKey(t.Context(), k)
				require.NoError(t, err)
				masters[node.Options().Addr] = true
			}
		}
	}
	return masters
}

// redisKeysCluster returns the keys under prefix on every master.
func redisKeysCluster(t *testing.T, cc *redis.ClusterClient, prefix string) []string {
	t.Helper()
	var (
		mu   sync.Mutex
		keys []string
	)
	err := cc.ForEachMaster(t.Context(), func(ctx context.Context, node *redis.Client) error {
		found, err := node.Keys(ctx, prefix+"*").Result()
		mu.Lock()
		keys = append(keys, found...)
		mu.Unlock()
		return err
	})
	require.NoError(t, err)
	return keys
}

// exactlyOnceConnect is [exactlyOnceHTTP] for interceptor instances and
// Connect clients: duplicates get CodeAborted, marked in flight.
func exactlyOnceConnect(t *testing.T, clients []redis.UniversalClient) {
	prefix := redistest.Prefix(t, clients[0])
	var (
		runs    atomic.Int64
		current atomic.Pointer[overlap]
	)
	charge := func(ctx context.Context, _ *connect.Request[paymentsv1.ChargeRequest]) (*connect.Response[paymentsv1.ChargeResponse], error) {
		run := runs.Add(1)
		current.Load().hold(ctx)
		return chargeResponse("connect", run), nil
	}
	instances := make([]paymentsv1connect.PaymentServiceClient, len(clients))
	for i, c := range clients {
		instances[i] = startConnect(t, newStore(t, c, prefix), charge)
	}

	for round := range rounds {
		key := newKey()
		o := newOverlap()
		current.Store(o)
		before := runs.Load()

		responses := make([]*connect.Response[paymentsv1.ChargeResponse], duplicates)
		errs := make([]error, duplicates)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range duplicates {
			wg.Go(func() {
				<-start
				responses[i], errs[i] = instances[i%len(instances)].Charge(t.Context(), chargeRequest(key))
				o.done()
			})
		}
		close(start)
		wg.Wait()

		require.Equal(t, int64(1), runs.Load()-before, "round %d: the handler must run exactly once", round)
		var first *connect.Response[paymentsv1.ChargeResponse]
		executed, conflicts := 0, 0
		for i, err := range errs {
			var ce *connect.Error
			switch {
			case err == nil:
				executed++
				first = responses[i]
				assert.Empty(t, first.Header().Get(replayHeader), "round %d: the execution is not a replay", round)
			case errors.As(err, &ce) && ce.Code() == connect.CodeAborted:
				conflicts++
				assert.Equal(t, idempotency.StatusInFlight, ce.Meta().Get(idempotency.StatusHeader), "round %d, request %d", round, i)
				assert.Equal(t, "1", ce.Meta().Get("Retry-After"), "round %d, request %d", round, i)
			default:
				assert.Fail(t, "unexpected answer", "round %d, request %d: %v", round, i, err)
			}
		}
		assert.Equal(t, 1, executed, "round %d: one call executes", round)
		assert.Equal(t, duplicates-1, conflicts, "round %d: every other call meets the claim in flight", round)
		require.NotNil(t, first, "round %d", round)

		for i, in := range instances {
			res, err := in.Charge(t.Context(), chargeRequest(key))
			if !assert.NoError(t, err, "round %d, replay from instance %d", round, i) {
				continue
			}
			assert.True(t, proto.Equal(first.Msg, res.Msg), "round %d, replay from instance %d: got %v, want %v", round, i, res.Msg, first.Msg)
			assert.Equal(t, "true", res.Header().Get(replayHeader), "round %d, replay from instance %d", round, i)
			assert.Equal(t, first.Header().Get("X-Charge-Id"), res.Header().Get("X-Charge-Id"), "round %d, replay from instance %d", round, i)
		}
		assert.Equal(t, int64(1), runs.Load()-before, "round %d: replays do not run the handler", round)
	}
}

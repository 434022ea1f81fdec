package redisstore_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
	"github.com/idemkey/idempotency/storetest"
)

// TestCluster runs the store on a three-master Redis Cluster: the
// conformance suite, and waits woken across nodes.
func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t)
	t.Logf("three-master cluster started in %v", cl.StartTime.Round(time.Millisecond))

	t.Run("Conformance", func(t *testing.T) {
		t.Parallel()
		c := cl.Client(t)
		storetest.Run(t, func(t *testing.T) idempotency.Store {
			s, _ := newStore(t, c)
			return s
		})
	})

	t.Run("WaitAcrossNodes", func(t *testing.T) {
		t.Parallel()
		ca, cb := cl.Client(t), cl.Client(t)
		a, prefix := newStore(t, ca)
		b := newStoreWithPrefix(t, cb, prefix, redisstore.WithPollInterval(noPoll))
		ctx := t.Context()

		// Enough keys that they land on every master, whichever node holds
		// b's subscription.
		const keys = 30
		masters := map[string]bool{}
		for range keys {
			key, token := storetest.Key(), newToken()
			_, err := a.Claim(ctx, key, token, noPoll)
			require.NoError(t, err)
			node, err := ca.MasterForKey(ctx, prefix+key)
			require.NoError(t, err)
			masters[node.Options().Addr] = true

			done := startWait(ctx, b, key)
			awaitMarked(t, ca, prefix+key)
			start := time.Now()
			require.NoError(t, a.Complete(ctx, key, token, []byte("r"), time.Minute))
			require.NoError(t, receive(t, done, 5*time.Second))
			assert.Less(t, time.Since(start), time.Second, "woken by a message, not the poll")
		}
		assert.Len(t, masters, 3, "the keys must spread over the three masters")
	})
}

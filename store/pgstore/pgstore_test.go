package pgstore_test

import (
	"testing"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/pgtest"
	"github.com/idemkey/idempotency/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	storetest.Run(t, func(t *testing.T) idempotency.Store {
		return newStore(t, pool)
	})
}

package pgstore_test

import (
	"testing"

	"github.com/idemkey/idempotency/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

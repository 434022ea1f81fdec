package hostile

import (
	"testing"

	"github.com/idemkey/idempotency/internal/redistest"
)

// TestMain stops the throwaway Redis that the tests share.
func TestMain(m *testing.M) { redistest.Main(m) }

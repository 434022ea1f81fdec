package connectv2_test

import (
	"testing"

	"github.com/idemkey/idempotency/internal/adaptertest"
)

// TestServerInterceptorObservability counts each outcome of the
// observability table of internal/adaptertest, in process.
func TestServerInterceptorObservability(t *testing.T) {
	t.Parallel()
	inProcess := v2Adapter
	inProcess.Protocols = []string{"inprocess"}
	adaptertest.RunObservability(t, inProcess)
}

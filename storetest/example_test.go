package storetest_test

import (
	"testing"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
	"github.com/idemkey/idempotency/storetest"
)

// A store's own tests run the conformance suite with a function that
// returns a fresh, empty store for each test; the suite closes nothing, so
// the function registers the clean-up. In a _test.go file of the store's
// package:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, newStore)
//	}
func ExampleRun() {
	newStore := func(t *testing.T) idempotency.Store {
		s := memory.New()
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	testConformance := func(t *testing.T) { storetest.Run(t, newStore) }
	_ = testConformance // a test function, run by go test
}

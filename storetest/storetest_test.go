package storetest_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/idemkey/idempotency/storetest"
)

func TestKey(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for range 1000 {
		key := storetest.Key()
		assert.True(t, strings.HasPrefix(key, "storetest:"), "key %q", key)
		assert.GreaterOrEqual(t, len(key), len("storetest:")+22, "key %q is too short to be unique", key)
		assert.False(t, seen[key], "key %q made twice", key)
		seen[key] = true
	}
}

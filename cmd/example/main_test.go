package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClientDemoRetriesWithOneKey(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	require.NoError(t, runClientDemo(&out, slog.New(slog.DiscardHandler)))
	text := out.String()
	assert.Contains(t, text, "the answer was lost")
	assert.Contains(t, text, "(replayed: true); the handler ran 1 time(s)")

	var keys []string
	for line := range strings.Lines(text) {
		if _, rest, ok := strings.Cut(line, "Idempotency-Key "); ok {
			key, _, _ := strings.Cut(rest, ":")
			keys = append(keys, key)
		}
	}
	require.Len(t, keys, 2)
	assert.Equal(t, keys[0], keys[1], "the retry carries the first attempt's key")
}

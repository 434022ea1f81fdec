package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency/store/memory"
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

// TestMetricsCountDecisions tries the help's commands for both adapters
// (a first call, then the same call again) and reads GET /metrics as a
// user would. It sets the global MeterProvider, so it does not run in
// parallel.
func TestMetricsCountDecisions(t *testing.T) {
	metrics, shutdown, err := setUpMetrics()
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, shutdown(context.Background())) })
	store := memory.New()
	t.Cleanup(func() { assert.NoError(t, store.Close()) })
	srv := httptest.NewServer(newMux(store, slog.New(slog.DiscardHandler), metrics))
	t.Cleanup(srv.Close)

	calls := []struct {
		name, path, key, body string
		wantStatus            int
	}{
		{name: "order", path: "/orders", key: "order-1", body: `{"item":"book","quantity":2}`, wantStatus: http.StatusCreated},
		{name: "charge", path: "/idemkey.payments.v1.PaymentService/Charge", key: "demo-1",
			body: `{"accountId":"acct_1","amountCents":1500,"currency":"EUR"}`, wantStatus: http.StatusOK},
	}
	for _, c := range calls {
		for i, wantReplayed := range []string{"", "true"} {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, srv.URL+c.path, strings.NewReader(c.body))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", c.key)
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			_ = resp.Body.Close()
			require.Equal(t, c.wantStatus, resp.StatusCode, "%s, call %d", c.name, i+1)
			require.Equal(t, wantReplayed, resp.Header.Get("Idempotent-Replayed"), "%s, call %d", c.name, i+1)
		}
	}

	resp, err := srv.Client().Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	got := decisions(t, string(body))
	for _, route := range []string{"POST /orders", "/idemkey.payments.v1.PaymentService/Charge"} {
		assert.Equal(t, map[string]string{"executed": "1", "replayed": "1"}, got[route], "decisions of %s", route)
	}
}

// decisionSample is one sample of idempotency_decisions_total, such as
//
//	idempotency_decisions_total{idempotency_outcome="executed",idempotency_route="POST /orders",otel_scope_name="..."} 1
var decisionSample = regexp.MustCompile(`^idempotency_decisions_total\{(.*)\} (\S+)$`)

var label = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// decisions reads the samples of idempotency_decisions_total in text, the
// Prometheus text format, into their values by route and outcome.
func decisions(t *testing.T, text string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for line := range strings.Lines(text) {
		m := decisionSample.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range label.FindAllStringSubmatch(m[1], -1) {
			labels[l[1]] = l[2]
		}
		route, outcome := labels["idempotency_route"], labels["idempotency_outcome"]
		require.NotEmpty(t, route, "route label in %q", line)
		require.NotEmpty(t, outcome, "outcome label in %q", line)
		if out[route] == nil {
			out[route] = map[string]string{}
		}
		out[route][outcome] = m[2]
	}
	require.NotEmpty(t, out, "no idempotency_decisions_total in:\n%s", text)
	return out
}

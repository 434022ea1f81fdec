package main

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	otelprometheus "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// setUpMetrics sets the global OpenTelemetry MeterProvider to one that the
// returned handler exports in the Prometheus text format, and returns a
// function that shuts the provider down. The library's adapters record on
// the global MeterProvider unless idempotency.WithMeterProvider says
// otherwise, so this is all a service does to see idempotency_decisions_total
// and the store's latencies next to its own metrics.
func setUpMetrics() (http.Handler, func(context.Context) error, error) {
	// A registry of its own rather than Prometheus's global one, so that
	// GET /metrics shows the service's metrics, without the Go runtime's.
	registry := prometheus.NewRegistry()
	exporter, err := otelprometheus.New(otelprometheus.WithRegisterer(registry))
	if err != nil {
		return nil, nil, err
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	otel.SetMeterProvider(provider)
	return promhttp.HandlerFor(registry, promhttp.HandlerOpts{}), provider.Shutdown, nil
}

// Package examples bundles drover's example app so that `drover demo` can
// deploy it from the binary alone.
package examples

import "embed"

// Hello is the example web service: main.go and its drover.yml template.
//
//go:embed hello/main.go hello/drover.yml
var Hello embed.FS

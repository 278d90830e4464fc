package config

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePullAllowsEnvironmentsWithoutHosts(t *testing.T) {
	src := `app: shop
repo: https://example.com/shop.git
deploy_to: /srv/shop
hooks:
  migrate: {run_once: true, role: db, commands: [./migrate]}
environments:
  staging:
  production:
    strategy: {type: rolling, batch: 1, max_fail: 1}
    load_balancer: {type: haproxy, socket: /run/haproxy/admin.sock, backend: shop}
`
	if _, err := Parse("drover.yml", []byte(src)); err == nil || !strings.Contains(err.Error(), "missing required key hosts") {
		t.Fatalf("Parse: want the hosts error, got %v", err)
	}
	f, err := ParsePull("drover.yml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if e := f.Environments["staging"]; e == nil || e.Name != "staging" || e.Strategy.Type != StrategyAllAtOnce {
		t.Fatalf("staging: %+v", e)
	}
	p := f.Environments["production"]
	if p.Strategy.Type != StrategyRolling || p.Strategy.MaxFail != Count(1) || p.LoadBalancer == nil || p.Strategy.DrainTimeout == 0 {
		t.Fatalf("production: %+v", p)
	}
}

func TestParsePullErrorsNameFileAndLine(t *testing.T) {
	src := `app: shop
repo: https://example.com/shop.git
deploy_to: /srv/shop
environments:
  production:
    strategy: {type: rollin}
`
	_, err := ParsePull("drover.yml@3f9c2ab", []byte(src))
	var es Errors
	if !errors.As(err, &es) || len(es) != 1 || es[0].Line != 6 || !strings.Contains(err.Error(), "drover.yml@3f9c2ab:6") || !strings.Contains(err.Error(), "unknown strategy") {
		t.Fatalf("got %v", err)
	}
}

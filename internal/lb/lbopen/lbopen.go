// Package lbopen builds the lb.Balancer an environment's drover.yml names.
// It is the one package that knows every backend; rollouts take the
// lb.Balancer it returns and never import a backend.
package lbopen

import (
	"context"
	"fmt"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/command"
	"github.com/drover/drover/internal/lb/elbv2"
	"github.com/drover/drover/internal/lb/haproxy"
)

// Open returns the Balancer c describes, or nil (and no error) when c is
// nil: the environment has no load balancer. It does not contact the load
// balancer; the first Members call does, and a rollout makes that call
// before it takes any node out.
func Open(ctx context.Context, c *config.LoadBalancer) (lb.Balancer, error) {
	if c == nil {
		return nil, nil
	}
	switch c.Type {
	case config.LBHAProxy:
		b := haproxy.New(c.Socket, c.Backend)
		if c.Timeout > 0 {
			b.Timeout = c.Timeout.D()
		}
		return b, nil
	case config.LBCommand:
		return command.New(command.Config{Drain: c.Drain, Enable: c.Enable, Status: c.Status, Timeout: c.Timeout.D()}), nil
	case config.LBELBv2:
		b, err := elbv2.Open(ctx, c.TargetGroupARN, c.Region, c.Endpoint)
		if err != nil {
			return nil, err
		}
		if c.Timeout > 0 {
			b.Timeout = c.Timeout.D()
		}
		return b, nil
	}
	return nil, fmt.Errorf("load_balancer: unknown type %q; use haproxy, command or elbv2", c.Type)
}

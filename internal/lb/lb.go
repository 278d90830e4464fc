// Package lb is how a rollout takes a node out of a load balancer and puts
// it back: one small interface, Balancer, with one package per kind of load
// balancer beneath it (haproxy, command, elbv2). A rollout trusts the load
// balancer's own view of who serves, never its own bookkeeping: another
// deploy, a node that went down on its own or an operator's hand all show
// there.
package lb

import (
	"context"
	"errors"
)

// ErrUnknownMember is returned when the load balancer has no member of that
// name (wrap it with the name and the backend).
var ErrUnknownMember = errors.New("no such member in the load balancer")

// Member is one node as the load balancer sees it.
type Member struct {
	// Name is the member's name in the load balancer: the host's lb_name,
	// name or address in drover.yml.
	Name string `json:"name"`
	// Enabled is false once the member is drained (or deregistered): the
	// load balancer sends it no new requests.
	Enabled bool `json:"enabled"`
	// Healthy is the load balancer's own health check verdict.
	Healthy bool `json:"healthy"`
	// Active counts the connections or requests the member still serves;
	// -1 when the load balancer cannot tell (then Draining says whether
	// in-flight work remains).
	Active int `json:"active"`
	// Draining is true while a drained member still finishes in-flight work
	// that the load balancer knows of.
	Draining bool `json:"draining"`
	// Detail is the load balancer's own word for the state ("UP 2/3",
	// "DRAIN", "unhealthy: Target.Timeout"), shown to people.
	Detail string `json:"detail,omitempty"`
}

// Serving reports whether the member takes new requests right now.
func (m Member) Serving() bool { return m.Enabled && m.Healthy }

// Idle reports whether a drained member has finished its in-flight work.
func (m Member) Idle() bool { return !m.Enabled && !m.Draining && m.Active <= 0 }

// Balancer is the load balancer in front of one environment.
type Balancer interface {
	// Members returns every member of the environment's pool as the load
	// balancer sees it now.
	Members(ctx context.Context) ([]Member, error)
	// Drain stops new requests to the member; requests in flight finish.
	Drain(ctx context.Context, member string) error
	// Enable sends new requests to the member again. Whether it serves
	// depends on the load balancer's health check (Members says).
	Enable(ctx context.Context, member string) error
}

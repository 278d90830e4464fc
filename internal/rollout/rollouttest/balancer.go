package rollouttest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/drover/drover/internal/lb"
)

// Balancer is an in-memory load balancer with one member per simulated
// host, named as the host. A member is healthy while its host serves and
// it was not marked down; a drained member reports connections for a few
// polls before it is idle.
type Balancer struct {
	journal *Journal

	mu          sync.Mutex
	order       []string
	members     map[string]*member
	unreachable bool
	drainPolls  int
	minServing  int // fewest members serving right after a drain; -1 before any drain
}

type member struct {
	host      *Host
	enabled   bool
	down      bool // down on its own, whatever its host does
	downAfter int  // > 0: goes down this many polls after its next enable
	armed     bool // enabled since DownAfterEnable
	sinceUp   int
	draining  int // polls left with connections after a drain
}

// NewBalancer is a load balancer in front of hosts, every member enabled.
func NewBalancer(j *Journal, hosts []*Host) *Balancer {
	b := &Balancer{journal: j, members: map[string]*member{}, minServing: -1}
	for _, h := range hosts {
		b.order = append(b.order, h.Name())
		b.members[h.Name()] = &member{host: h, enabled: true}
	}
	return b
}

// SetUnreachable makes every call fail, as a load balancer that cannot be
// reached.
func (b *Balancer) SetUnreachable(v bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unreachable = v
}

// SetDrainPolls makes a drained member report active connections for n
// polls of Members before it is idle.
func (b *Balancer) SetDrainPolls(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drainPolls = n
}

// SetDown marks member name down (or up again) on its own, as a failed
// health check the load balancer sees whatever the host runs.
func (b *Balancer) SetDown(name string, down bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.members[name].down = down
}

// DownAfterEnable makes member name go down polls polls of Members after
// its next enable: a host that comes up and then fails.
func (b *Balancer) DownAfterEnable(name string, polls int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.members[name].downAfter = polls
}

// MinServing is the fewest members that served right after any drain;
// -1 when nothing was drained.
func (b *Balancer) MinServing() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.minServing
}

// Enabled reports whether member name takes requests.
func (b *Balancer) Enabled(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.members[name].enabled
}

var errLBUnreachable = errors.New("dial unix /run/haproxy/admin.sock: connection refused (simulated)")

func (b *Balancer) healthy(m *member) bool { return !m.down && m.host.Serving() }

// Members implements lb.Balancer.
func (b *Balancer) Members(ctx context.Context) ([]lb.Member, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unreachable {
		return nil, errLBUnreachable
	}
	var out []lb.Member
	for _, name := range b.order {
		m := b.members[name]
		if m.enabled && m.armed {
			m.sinceUp++
			if m.sinceUp > m.downAfter {
				m.down, m.downAfter, m.armed = true, 0, false
			}
		}
		x := lb.Member{Name: name, Enabled: m.enabled, Healthy: b.healthy(m)}
		if !m.enabled && m.draining > 0 {
			x.Active, x.Draining = m.draining, true
			m.draining--
		}
		switch {
		case !x.Enabled:
			x.Detail = "DRAIN"
		case x.Healthy:
			x.Detail = "UP"
		default:
			x.Detail = "DOWN"
		}
		out = append(out, x)
	}
	return out, nil
}

// lookup is member name; the caller holds b.mu.
func (b *Balancer) lookup(name string) (*member, error) {
	if b.unreachable {
		return nil, errLBUnreachable
	}
	if m := b.members[name]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("%w: %s", lb.ErrUnknownMember, name)
}

// Drain implements lb.Balancer.
func (b *Balancer) Drain(ctx context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, err := b.lookup(name)
	if err != nil {
		return err
	}
	m.enabled, m.draining = false, b.drainPolls
	serving := 0
	for _, x := range b.members {
		if x.enabled && b.healthy(x) {
			serving++
		}
	}
	if b.minServing < 0 || serving < b.minServing {
		b.minServing = serving
	}
	b.journal.Add("lb drain %s", name)
	return nil
}

// Enable implements lb.Balancer.
func (b *Balancer) Enable(ctx context.Context, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	m, err := b.lookup(name)
	if err != nil {
		return err
	}
	m.enabled, m.draining, m.sinceUp, m.armed = true, 0, 0, m.downAfter > 0
	b.journal.Add("lb enable %s", name)
	return nil
}

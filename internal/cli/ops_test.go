package cli

import (
	"strings"
	"testing"

	"github.com/drover/drover/internal/service"
)

// TestSocketLine: what service status says under the table for a socket
// service, from the Process the host reported.
func TestSocketLine(t *testing.T) {
	cases := []struct {
		name string
		p    service.Process
		want []string
	}{
		{"plain service", service.Process{Service: "web", Port: 8000, PID: 10, Running: true}, nil},
		{"held", service.Process{Port: 8000, PID: 10, Running: true, Listeners: []int{10},
			Supervisor: &service.SupervisorState{PID: 5, Running: true, State: "running", Sockets: []string{"127.0.0.1:8000"}}},
			[]string{"socket held by supervisor pid 5 (127.0.0.1:8000)", "listening: pid 10"}},
		{"restart under way", service.Process{Port: 8000, PID: 10, Running: true, Listeners: []int{10, 11}, NewPID: 11, NewReleaseDir: "/srv/r2",
			Supervisor: &service.SupervisorState{PID: 5, Running: true, State: "running"}},
			[]string{"listening: pid 10, 11", "new process pid 11 from /srv/r2 not yet healthy"}},
		{"supervisor dead", service.Process{Port: 8000, PID: 10, Running: true, Listeners: []int{10}, Orphan: true,
			Supervisor: &service.SupervisorState{PID: 5, State: "dead"}},
			[]string{"supervisor pid 5 dead: the socket is not held", "listening: pid 10", "`drover service restart` replaces it"}},
		{"stopped", service.Process{Port: 8000, Supervisor: &service.SupervisorState{State: "stopped"}},
			[]string{"no supervisor", "no process listens"}},
		{"systemd socket unit", service.Process{Unit: "shop-web.service", Running: true,
			Supervisor: &service.SupervisorState{Running: true, State: "socket unit shop-web.socket: active", Sockets: []string{"127.0.0.1:8000 (Stream)"}}},
			[]string{"socket unit shop-web.socket: active, listening on 127.0.0.1:8000 (Stream)"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := socketLine(tc.p)
			if tc.want == nil && got != "" {
				t.Errorf("socketLine = %q; want nothing", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("socketLine = %q; want it to say %q", got, w)
				}
			}
		})
	}
}

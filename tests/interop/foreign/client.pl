# Perl Gearman::Client: ten foreground jobs (results printed in hex), then five
# background jobs.
use strict;
use warnings;
use Gearman::Client;

my ($host, $port, $func) = @ARGV;
my $client = Gearman::Client->new(job_servers => ["$host:$port"]);
for my $i (0 .. 9) {
    my $result = $client->do_task($func, "job-$i\0x", {timeout => 20});
    print defined $result ? unpack("H*", $$result) : "FAIL", "\n";
}
for my $i (0 .. 4) {
    $client->dispatch_background($func, "bg-$i") or die "background job $i not accepted\n";
}

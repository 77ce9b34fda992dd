# Perl Gearman::Worker (libgearman-client-perl, its own protocol code): reverses
# each job's bytes; background jobs ("bg-...") are also appended to a file.
use strict;
use warnings;
use Gearman::Worker;

my ($host, $port, $func, $out) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => ["$host:$port"]);
$worker->register_function(
    $func => sub {
        my $arg = $_[0]->arg;
        if ($arg =~ /^bg-/) {
            open(my $fh, '>>', $out) or die "cannot append to $out: $!";
            print $fh "$arg\n";
            close $fh;
        }
        return scalar reverse $arg;
    }
);
$worker->work while 1;

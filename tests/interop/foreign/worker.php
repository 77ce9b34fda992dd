<?php
// PHP's pecl gearman (GearmanWorker, on libgearman): reverses each job's bytes;
// background jobs ("bg-...") are also appended to a file.
[, $host, $port, $func, $out] = $argv;
$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->addFunction($func, function (GearmanJob $job) use ($out) {
    $arg = $job->workload();
    if (str_starts_with($arg, "bg-")) {
        file_put_contents($out, "$arg\n", FILE_APPEND);
    }
    return strrev($arg);
});
while ($worker->work()) {
}
fwrite(STDERR, "worker stopped: " . $worker->error() . "\n");
exit(1);

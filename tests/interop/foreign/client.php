<?php
// PHP's pecl gearman (GearmanClient): ten foreground jobs (results printed in
// hex), then five background jobs.
[, $host, $port, $func] = $argv;
$client = new GearmanClient();
$client->addServer($host, (int) $port);
$client->setTimeout(20000);
for ($i = 0; $i < 10; $i++) {
    $result = $client->doNormal($func, "job-$i\0x");
    echo $client->returnCode() == GEARMAN_SUCCESS ? bin2hex($result) : "FAIL", "\n";
}
for ($i = 0; $i < 5; $i++) {
    $client->doBackground($func, "bg-$i");
    if ($client->returnCode() != GEARMAN_SUCCESS) {
        fwrite(STDERR, "background job $i not accepted: " . $client->error() . "\n");
        exit(1);
    }
}

# The job image of profiles/kubernetes and profiles/googlebatch: the pinned environment of
# envs/threeregime.yaml, this checkout's threeregime package, and the Snakemake that runs each job
# inside the container with the storage plugins of those profiles. From a clone at a release:
#
#   docker build -t <registry>/threeregime:<release> . && docker push <registry>/threeregime:<release>
#
# (`snakemake --containerize` writes only the conda environment, without Snakemake or the
# package, so it is not enough for a job that has no shared file system.)
ARG BASE=condaforge/miniforge3:25.3.0-1
FROM ${BASE}

# The jobs' Python and libraries, exactly as pinned (what `--sdm conda` builds too).
COPY envs/threeregime.yaml /tmp/threeregime.yaml
RUN conda env create --prefix /opt/threeregime --file /tmp/threeregime.yaml \
    && conda clean --all --yes
ENV PATH=/opt/threeregime/bin:$PATH

# Snakemake runs every job in the container (`python -m snakemake ... --mode remote`) and moves
# its files in and out of storage: the version the workflow is tested with, and the storage
# plugins the profiles name (s3, gcs) plus fs; the pins above constrain what they pull in.
RUN python -c "import yaml; deps = yaml.safe_load(open('/tmp/threeregime.yaml'))['dependencies']; \
print('\n'.join(next(d['pip'] for d in deps if isinstance(d, dict))))" > /tmp/pins.txt \
    && pip install --no-cache-dir --constraint /tmp/pins.txt snakemake==9.27.1 \
       snakemake-storage-plugin-s3==0.3.6 snakemake-storage-plugin-gcs==1.1.4 \
       snakemake-storage-plugin-fs==1.1.3 \
    && rm /tmp/pins.txt /tmp/threeregime.yaml

# The package, without touching the pinned libraries (--no-deps); pip check fails the build
# when one of its requirements is missing or outside pyproject.toml's range.
COPY pyproject.toml README.md /src/threeregime/
COPY threeregime /src/threeregime/threeregime
RUN pip install --no-cache-dir --no-deps /src/threeregime && pip check \
    && python -c "import threeregime.cli" && rm -rf /src/threeregime

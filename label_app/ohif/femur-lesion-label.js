/*
 * Femur lesion annotation: what the OHIF viewer bundled with monailabel 0.8.5 lacks for this app.
 *
 * Why this file exists: the bundled MONAI Label panel
 *   1. talks to the server at port 8000 of the page's host unless the MONAILABEL_SERVER_URL cookie names
 *      another server, and
 *   2. has no button that saves the annotator's segmentation.
 * The installed package is left as it is: the annotation server (label_app/lib/ohif.py) serves OHIF's
 * page with this script loaded first, before OHIF's own (deferred) scripts.
 *
 * 1. The cookie is set to the server that served this page, before the panel reads it.
 * 2. A "Save label" button in the MONAI Label panel sends the panel's labelmap (segmentation "1", which the
 *    panel creates on the CT volume's grid and fills with the model's result) to
 *    PUT /datastore/label?image=<series>&tag=final as an NRRD in the CT's patient (LPS) geometry; the app's
 *    datastore stores it as a DICOM-SEG in the PACS, where it counts as a final label. Segments are matched
 *    to the app's labels by name: the panel numbers them alphabetically, the app in the order of /info's
 *    "labels" list (value = position + 1).
 * 3. The panel copies the voxels of the model's NRRD into its labelmap as they come, ignoring the NRRD's
 *    geometry, and cornerstone stacks the CT's slices in ascending order along the image plane's normal,
 *    which need not be the series' order. So the panel's inference requests (axios, over
 *    XMLHttpRequest) ask the app for that slice order ("slice_order": "ascending").
 * 4. The panel's Active Learning strategy list has no change handler: "Next Sample" always asks for the
 *    strategy "random". Its requests go to the strategy the list shows instead (e.g. "uncertainty").
 * 5. The "monai-label" mode sets up cornerstone's brush and eraser but shows no control for them (its
 *    segmentation toolbox is in no panel of its layout). The panel gets a "Correct" row: the segment to
 *    paint, Brush, Eraser, the brush radius (mm), and Done (back to window/level).
 *
 * window.femurLesionLabel.saveLabel() does what the button does (and returns the server's answer).
 */
(function () {
  'use strict';

  // Where MONAI Label is: this page's server, under the path that leads to /ohif/.
  const path = window.location.pathname;
  const base = path.indexOf('/ohif') >= 0 ? path.slice(0, path.indexOf('/ohif')) : '';
  const SERVER = window.location.origin + base + '/';
  // The panel reads the cookie with unescape() and, when it has none, writes its default with the page's
  // default cookie path (/ohif): the same path here replaces a stale value from another server.
  document.cookie = 'MONAILABEL_SERVER_URL=' + escape(SERVER) + '; path=' + base + '/ohif; SameSite=Lax';

  /** The strategy the Active Learning list shows, or null. */
  function chosenStrategy() {
    const select = document.querySelector('.monaiLabelPanel input[name="activelearning"] ~ .tab-content select');
    return select && select.value ? select.value : null;
  }

  // 3. Inference requests to this server: the label file in OHIF's slice order (in send below).
  // 4. Next Sample: the strategy the list shows.
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    const target = new URL(String(url), window.location.href);
    const strategy = chosenStrategy();
    if (strategy && target.href.startsWith(SERVER + 'activelearning/')) {
      url = new URL('activelearning/' + encodeURIComponent(strategy) + target.search, SERVER).toString();
    }
    this.femurLesionUrl = target;  // every other request goes out as OHIF wrote it
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (body) {
    const url = this.femurLesionUrl;
    if (url && url.href.startsWith(SERVER + 'infer/') && body instanceof FormData && body.has('params')) {
      const params = JSON.parse(body.get('params') || '{}');
      params.slice_order = 'ascending';
      body.set('params', JSON.stringify(params));
    }
    return send.call(this, body);
  };

  // The segmentation the panel loads the model's result into (MonaiLabelPanel.onInfo / updateView).
  const SEGMENTATION_ID = '1';
  const BUTTON_ID = 'femurLesionSaveLabel';
  const STATUS_ID = 'femurLesionSaveStatus';

  function services() {
    if (!window.services || !window.services.segmentationService) {
      throw new Error('OHIF is not ready yet');
    }
    return window.services;
  }

  /** The SeriesInstanceUID of the series in the active viewport (the image the panel ran the model on). */
  function activeSeries() {
    const { viewportGridService, displaySetService } = services();
    const { viewports, activeViewportId } = viewportGridService.getState();
    const viewport = viewports.get(activeViewportId);
    if (!viewport || !viewport.displaySetInstanceUIDs || !viewport.displaySetInstanceUIDs.length) {
      throw new Error('no series in the active viewport');
    }
    return displaySetService.getDisplaySetByUID(viewport.displaySetInstanceUIDs[0]).SeriesInstanceUID;
  }

  function vector(values) {
    return '(' + Array.from(values).map(v => Number(v).toString()).join(',') + ')';
  }

  /**
   * An NRRD file (raw uint8) of a labelmap on a cornerstone volume's grid.
   * Cornerstone's scalars run x fastest, then y, then z; its direction rows are the unit steps of i, j, k
   * in patient LPS millimetres, its origin the centre of voxel (0, 0, 0).
   */
  function nrrd(data, dimensions, spacing, direction, origin) {
    const steps = [0, 1, 2].map(axis => vector([0, 1, 2].map(c => direction[3 * axis + c] * spacing[axis])));
    const header = [
      'NRRD0004',
      'type: uint8',
      'dimension: 3',
      'space: left-posterior-superior',
      'sizes: ' + dimensions.join(' '),
      'space directions: ' + steps.join(' '),
      'kinds: domain domain domain',
      'endian: little',
      'encoding: raw',
      'space origin: ' + vector(origin),
      '',
      '',
    ].join('\n');
    return new Blob([header, data], { type: 'application/octet-stream' });
  }

  /** The panel's labelmap with the app's label values, and the names of segments no label matches. */
  function appLabelmap(labels) {
    const { segmentationService } = services();
    const volume = segmentationService.getLabelmapVolume(SEGMENTATION_ID);
    const segmentation = segmentationService.getSegmentation(SEGMENTATION_ID);
    if (!volume || !segmentation) {
      throw new Error('no segmentation to save: run the model (Auto-Segmentation) first');
    }
    const toApp = new Uint8Array(256);
    const unknown = {};
    for (const [index, segment] of Object.entries(segmentation.segments || {})) {
      if (!segment) {
        continue;
      }
      const value = labels.indexOf(segment.label) + 1;
      toApp[Number(index)] = value;
      if (!value) {
        unknown[Number(index)] = segment.label;
      }
    }
    const scalars = volume.voxelManager.getCompleteScalarDataArray();
    const data = new Uint8Array(scalars.length);
    const unmatched = new Set();
    let labelled = 0;
    for (let i = 0; i < scalars.length; i++) {
      const value = toApp[scalars[i]];
      data[i] = value;
      if (value) {
        labelled++;
      } else if (scalars[i]) {
        unmatched.add(unknown[scalars[i]] || 'segment ' + scalars[i]);
      }
    }
    return { volume, data, labelled, unmatched: Array.from(unmatched) };
  }

  /** Save the panel's segmentation as the final label of the active series; the server's JSON answer. */
  async function saveLabel() {
    const series = activeSeries();
    const infoResponse = await fetch(SERVER + 'info/');
    if (!infoResponse.ok) {
      throw new Error('MONAI Label did not answer /info/ (' + infoResponse.status + ')');
    }
    const labels = (await infoResponse.json()).labels;
    if (!Array.isArray(labels)) {
      throw new Error('the server lists its labels as ' + typeof labels + ', expected a list');
    }
    const { volume, data, labelled, unmatched } = appLabelmap(labels);
    if (unmatched.length) {
      throw new Error('segments with no label of the app: ' + unmatched.join(', ')
        + ' (labels: ' + labels.join(', ') + ')');
    }
    if (!labelled) {
      throw new Error('the segmentation is empty: nothing to save');
    }
    const form = new FormData();
    form.append('params', JSON.stringify({ source: 'ohif' }));
    form.append('label', nrrd(data, volume.dimensions, volume.spacing, volume.direction, volume.origin), 'label.nrrd');
    const url = new URL('datastore/label', SERVER);
    url.searchParams.set('image', series);
    url.searchParams.set('tag', 'final');
    const response = await fetch(url.toString(), { method: 'PUT', body: form });
    const text = await response.text();
    if (!response.ok) {
      throw new Error('saving failed (' + response.status + '): ' + text.slice(0, 300));
    }
    return JSON.parse(text);
  }

  /** The panel's segments, index -> name. */
  function segments() {
    const segmentation = services().segmentationService.getSegmentation(SEGMENTATION_ID);
    const names = {};
    for (const [index, segment] of Object.entries((segmentation && segmentation.segments) || {})) {
      if (segment) {
        names[index] = segment.label;
      }
    }
    return names;
  }

  /** Fill the segment list from the panel's segmentation (it exists once the panel is connected). */
  function refreshSegments(select) {
    let names = {};
    try {
      names = segments();
    } catch (error) {
      return;
    }
    const wanted = select.value;
    select.replaceChildren(...Object.entries(names).map(([index, name]) => new Option(name, index)));
    if (wanted && names[wanted]) {
      select.value = wanted;
    }
  }

  /** Make cornerstone's tool `toolName` the left-button tool of every viewport (OHIF's own command). */
  function useTool(toolName, select, size) {
    const { segmentationService, toolGroupService } = services();
    if (toolName !== 'WindowLevel') {
      refreshSegments(select);
      if (!select.value) {
        throw new Error('no segmentation to correct: connect and run the model (Auto-Segmentation) first');
      }
      segmentationService.setActiveSegment(SEGMENTATION_ID, Number(select.value));
    }
    window.commandsManager.runCommand('setToolActiveToolbar', { toolName });
    const radius = Number(size.value);
    if (toolName !== 'WindowLevel' && radius > 0) {
      for (const id of toolGroupService.getToolGroupIds()) {
        window.cornerstoneTools.utilities.segmentation.setBrushSizeForToolGroup(id, radius);
      }
    }
  }

  /** Show a message under the button and, unless `toast` is false, as an OHIF notification. */
  function notify(message, type, toast = true) {
    const status = document.getElementById(STATUS_ID);
    if (status) {
      status.textContent = message;
      status.dataset.state = type;
    }
    if (!toast) {
      return;
    }
    try {
      services().uiNotificationService.show({ title: 'MONAI Label', message, type, duration: 5000 });
    } catch (error) {
      console.warn('notification not shown', error);
    }
  }

  async function onSave(event) {
    const button = event.currentTarget;
    button.disabled = true;
    notify('Saving the label...', 'info');
    try {
      const answer = await saveLabel();
      notify('Label saved (final): ' + answer.label, 'success');
    } catch (error) {
      console.error('Save label failed', error);
      notify('Save label failed: ' + error.message, 'error');
    } finally {
      button.disabled = false;
    }
  }

  /** "Correct: [segment] Brush Eraser [radius] Done", the controls of item 5 in the header. */
  function correctionRow() {
    const row = document.createElement('div');
    row.style.marginTop = '6px';
    row.style.color = 'white';
    row.style.fontSize = 'smaller';
    const select = document.createElement('select');
    select.id = 'femurLesionSegment';
    select.title = 'The segment the brush paints';
    select.style.color = 'black';
    select.addEventListener('focus', () => refreshSegments(select));
    select.addEventListener('mousedown', () => refreshSegments(select));
    select.addEventListener('change', () => {
      services().segmentationService.setActiveSegment(SEGMENTATION_ID, Number(select.value));
    });
    const size = document.createElement('input');
    size.id = 'femurLesionBrushSize';
    size.type = 'number';
    size.min = '1';
    size.max = '50';
    size.value = '5';
    size.title = 'Brush radius (mm)';
    size.style.width = '3.5em';
    size.style.color = 'black';
    const tools = [['Brush', 'CircularBrush'], ['Eraser', 'CircularEraser'], ['Done', 'WindowLevel']];
    const buttons = tools.map(([text, toolName]) => {
      const tool = document.createElement('button');
      tool.type = 'button';
      tool.className = 'actionButton';
      tool.id = 'femurLesionTool' + text;
      tool.textContent = text;
      tool.style.padding = '0 6px';
      tool.style.marginLeft = '4px';
      tool.addEventListener('click', () => {
        try {
          useTool(toolName, select, size);
          notify(text === 'Done' ? 'Window/level on the left button' : text + ' on the left button', 'tool', false);
        } catch (error) {
          notify(error.message, 'error');
        }
      });
      return tool;
    });
    row.append('Correct: ', select, ...buttons.slice(0, 2), ' mm ', size, buttons[2]);
    return row;
  }

  /** Add the button to the MONAI Label panel whenever the panel is (re)drawn without it. */
  function addButton() {
    const panel = document.querySelector('.monaiLabelPanel');
    if (!panel || document.getElementById(BUTTON_ID)) {
      return;
    }
    const box = document.createElement('div');
    box.style.margin = '6px 0';
    const button = document.createElement('button');
    button.id = BUTTON_ID;
    button.className = 'actionButton';
    button.type = 'button';
    button.textContent = 'Save label';
    button.title = 'Store the segmentation as the final label of this series (DICOM-SEG in the PACS)';
    button.style.padding = '2px 10px';
    button.addEventListener('click', onSave);
    const status = document.createElement('div');
    status.id = STATUS_ID;
    status.style.fontSize = 'smaller';
    status.style.color = 'white';
    box.append(button, status, correctionRow());
    const settings = panel.querySelector('.settingsTable');
    if (settings && settings.nextSibling) {
      panel.insertBefore(box, settings.nextSibling);
    } else {
      panel.append(box);
    }
  }

  new MutationObserver(addButton).observe(document.documentElement, { childList: true, subtree: true });
  window.femurLesionLabel = { saveLabel, server: SERVER };
})();
